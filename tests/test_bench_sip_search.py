"""make bench-sip's rate search and its docs/BENCHMARKS.md section, without SIPp.

The search is driven by a stand-in server that holds every rate up to its
capacity and fails above it; the SIPp runs themselves are exercised by
`make bench-sip`.
"""

from __future__ import annotations

from bench.markdown import keep_sections, replace_section
from bench.sip_search import Run, Search
from bench.sipp_client import SippCounts


def run_at(rate: float, seconds: float, capacity: float, sustained_capacity: float | None = None) -> Run:
    """A run against a server that completes every call up to `capacity` calls/s (for runs of the
    sustained length, up to `sustained_capacity`) and fails a tenth of them above."""
    limit = capacity if sustained_capacity is None or seconds < 10 else sustained_capacity
    calls = round(rate * seconds)
    failed = 0 if rate <= limit else calls // 10
    uac = SippCounts(successful=calls - failed, failed=failed, exit_status=1 if failed else 0,
                     call_rate=rate, wall_seconds=seconds)
    return Run(rate, seconds, calls, uac, None, cpu_ns=calls * 20_000, rcvbuf_errors=0, messages_per_call=1)


def search_against(capacity: float, sustained_capacity: float | None = None, **options) -> Search:
    search = Search(**{"start_rate": 500, "max_rate": 30000, "probe_seconds": 3, "duration": 10, "rounds": 3,
                       **options})
    for _ in range(100):
        step = search.next_run()
        if step is None:
            return search
        search.record(run_at(*step, capacity, sustained_capacity))
    raise AssertionError("the search did not end")


def test_the_rate_found_is_within_the_resolution_below_the_capacity():
    search = search_against(7000)
    assert 7000 / 1.1 <= search.rate <= 7000
    assert len(search.sustained) == 3 and all(r.seconds == 10 and r.ok for r in search.sustained)
    assert search.cpu_us_per_message == 20.0
    assert search.limit.startswith(f"{search.failed:g}/s: ") and search.failed <= 7000 * 1.1


def test_a_failed_sustained_run_backs_off_and_starts_the_rounds_over():
    search = search_against(7000, sustained_capacity=5500)
    assert search.rate is not None and search.rate <= 5500
    assert search.backoffs >= 1
    assert len(search.sustained) == 3 and {r.rate for r in search.sustained} == {search.rate}


def test_a_server_that_holds_every_rate_is_measured_at_the_maximum():
    search = search_against(10**9, max_rate=30000)
    assert search.rate == 30000
    assert search.limit == ""


def test_a_server_that_fails_at_the_start_rate_is_searched_downwards():
    search = search_against(130)
    assert search.rate is not None and 130 / 1.1 <= search.rate <= 130


def test_a_server_that_fails_every_rate_is_given_up():
    search = search_against(0)
    assert search.rate is None and search.next_run() is None
    assert search.gave_up.startswith("fails even at")


def test_a_run_that_ends_late_does_not_count():
    late = run_at(5000, 3, capacity=10**9)
    late.uac.wall_seconds = 5.0
    assert not late.ok and "lasted 5.0 s" in late.failure


def test_a_section_is_replaced_and_other_benchmarks_keep_theirs():
    text = replace_section("# Benchmarks\n\nlifecycle table\n", "bench-sip", "## SIP\nfirst")
    text = replace_section(text, "bench-sip", "## SIP\nsecond")
    assert text.count("## SIP") == 1 and "second" in text and "first" not in text
    rewritten = keep_sections(text, "# Benchmarks\n\nnew lifecycle table\n")
    assert "new lifecycle table" in rewritten and "## SIP\nsecond" in rewritten
