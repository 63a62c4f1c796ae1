"""make bench-overload's pure helpers (bench/overload.py), without SIPp or a server: the
kernel's drop counters and SIPp's -trace_counts files, read for both transports."""

from __future__ import annotations

from pathlib import Path

from bench.overload import kernel_statistic, message_counts

SNMP = ("Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
        "Udp: 10 0 3 9 7 0\n"
        "UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
        "UdpLite: 0 0 0 0 0 0\n")
NETSTAT = ("TcpExt: SyncookiesSent ListenOverflows ListenDrops\n"
           "TcpExt: 1 4 5\n")


def test_kernel_statistic_reads_the_named_counter_of_its_section() -> None:
    assert kernel_statistic(SNMP, "Udp:", "RcvbufErrors") == 7
    assert kernel_statistic(SNMP, "UdpLite:", "RcvbufErrors") == 0
    assert kernel_statistic(NETSTAT, "TcpExt:", "ListenDrops") == 5


def write_counts(path: Path, columns: list[str], lines: list[list[int]]) -> None:
    rows = [";".join(["CurrentTime", "ElapsedTime", *columns]) + ";"]
    rows += [";".join(["2026-12-07\t20:00:00", "00:00:01", *map(str, line)]) + ";" for line in lines]
    path.write_text("\n".join(rows) + "\n")


def test_message_counts_sums_the_last_line_of_every_run(tmp_path: Path) -> None:
    write_counts(tmp_path / "overload-options_1_counts.csv",
                 ["0_OPTIONS_Sent", "0_OPTIONS_Retrans", "1_503_Recv", "2_200_Recv"],
                 [[5, 0, 1, 2], [100, 0, 30, 70]])
    write_counts(tmp_path / "overload-invite_2_counts.csv",
                 ["0_INVITE_Sent", "1_100_Recv", "2_503_Recv", "3_486_Recv", "4_ACK_Sent"],
                 [[90, 0, 10, 80, 90]])
    assert message_counts(tmp_path, "Recv") == {"503": 40, "200": 70, "100": 0, "486": 80}
    assert message_counts(tmp_path, "Sent") == {"OPTIONS": 100, "INVITE": 90, "ACK": 90}


def test_message_counts_of_a_run_that_wrote_no_line_yet(tmp_path: Path) -> None:
    write_counts(tmp_path / "overload-options_1_counts.csv", ["0_OPTIONS_Sent", "1_200_Recv"], [])
    assert message_counts(tmp_path, "Sent") == {}
