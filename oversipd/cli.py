"""The `oversipd` command: parse the command line, turn errors into exit statuses."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import oversipd

from . import listeners, logger, pidfile, privileges, process, reexec, user_commands
from .daemonize import DEFAULT_READY_TIMEOUT
from .errors import ALREADY_RUNNING, EXIT_FATAL, EXIT_OK, EXIT_USAGE, ConfigError, HaltServer, StartupError
from .generations import running_module_code
from .launcher import Launcher
from .loader import ModuleLoadError, load_all
from .settings import LOG_LEVELS, Overrides, Settings, default_conf_path, load_settings

if TYPE_CHECKING:
    from .daemonize import StartupReport

COMMANDS = ("run", "check", "reload", "stop", "status", "new-module", "user")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oversipd", description="Pre-fork master/worker daemon hosting OverSIP-style modules.")
    parser.add_argument("--version", action="version", version=f"oversipd {oversipd.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon (the default command)")
    _add_conf(run)
    run.add_argument("-w", "--workers", type=_workers_option, help='worker count (int >= 1 or "auto")')
    run.add_argument("--modules-dir", metavar="DIR", help="drop-in modules directory")
    run.add_argument("--pid-file", metavar="PATH", help="pid file")
    run.add_argument("--log-level", choices=LOG_LEVELS, help="lowest level logged")
    run.add_argument("-d", "--daemonize", action="store_true", help="detach; return once ready")
    run.add_argument("--ready-timeout", type=float, default=DEFAULT_READY_TIMEOUT, metavar="SECONDS",
                     help=f"with --daemonize: fail (status 1) when not ready within SECONDS "
                          f"(default {DEFAULT_READY_TIMEOUT:g})")
    _add_insecure(run)

    check = commands.add_parser("check", help="validate the configuration, import modules, run nothing")
    _add_conf(check)
    check.add_argument("--modules-dir", metavar="DIR", help="drop-in modules directory")
    _add_insecure(check)

    for name, text in (("reload", "send SIGHUP to the running master"),
                       ("stop", "send SIGTERM to the running master and wait until it is gone"),
                       ("status", "show the master and its workers")):
        sub = commands.add_parser(name, help=text)
        _add_conf(sub)
        sub.add_argument("--pid-file", metavar="PATH", help="pid file of the running master")

    new_module = commands.add_parser("new-module", help="create oversip-mod-NAME/, a module distribution to start from")
    new_module.add_argument("name", metavar="NAME", help="the module's name: oversipd.modules.NAME")
    new_module.add_argument("--dir", default=".", metavar="DIR", help="where to create it (default: .)")
    new_module.add_argument("--with-resource", action="store_true",
                            help="a module holding one connection per worker (oversipd.worker_resource)")
    user_commands.add_parser(commands, _add_conf)
    return parser


def _add_conf(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--conf", metavar="CONF", default=None,
                        help="configuration file (default: $OVERSIPD_CONF, then /etc/oversipd/oversipd.conf)")


def _add_insecure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--insecure-modules", action="store_true",
                        help="allow module files writable by group or others")


def _workers_option(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer >= 1 or "auto", got {value!r}') from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv.insert(0, "run")  # `run` is the default command
    return build_parser().parse_args(argv)


def overrides_from(args: argparse.Namespace) -> Overrides:
    # A path given on the command line is relative to where the command
    # runs, not to the configuration file's directory.
    return Overrides(workers=getattr(args, "workers", None),
                     modules_dir=_absolute(getattr(args, "modules_dir", None)),
                     pid_file=_absolute(getattr(args, "pid_file", None)),
                     log_level=getattr(args, "log_level", None))


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else path


def load(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.conf or default_conf_path(), overrides_from(args))
    privileges.check_identity(settings)
    return settings


def prepare_master(args: argparse.Namespace, settings: Settings | None = None,
                   report: "StartupReport | None" = None, bind: bool = False) -> Settings:
    """Validate, configure logging, bind (with `bind`) and import every module; nothing forked yet.

    Daemonized (`report` given), the log goes to syslog, and CRIT lines also
    to the launching terminal until the daemon is ready.
    """
    settings = settings or load(args)
    logger.configure(settings.core.log_level, settings.core.syslog_facility if report else None)
    if report is not None:
        logger.add_handler(report)
    oversipd.config = settings
    if bind:
        # Before any module code runs (a bind failure is exit status 2 with
        # nothing started) and before the fork, so before any worker drops
        # its privileges.
        if settings.sip is None:
            listeners.open_listeners(settings.listen, str(settings.path))
        else:
            from .sip import service as sip_service
            listeners.open_listeners(settings.listen, str(settings.path), sip_service.reuseport_names(settings))
            sip_service.prepare_master(settings)
    try:
        with running_module_code():  # what it imports, a new generation may import anew (SIGUSR2)
            load_all(settings.core.modules_dir, settings.core.server_script, args.insecure_modules)
    except ModuleLoadError as failure:
        logger.core_log.log_system_crit(f"{failure.what} failed to import:")
        Launcher.fatal(failure.error)
    return settings


def command_run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    settings = load(args)
    if not args.daemonize:
        return serve(args, settings, argv=argv)
    from .daemonize import launch

    # Checked here too so that the launching terminal hears of it at once;
    # the daemon's own lock on the pid file is what settles a race.
    running = pidfile.running_pid(settings.core.pid_file) if settings.core.pid_file else None
    if running is not None:
        raise StartupError(ALREADY_RUNNING.format(path=settings.core.pid_file, pid=running))
    return launch(lambda report: serve(args, settings, report, argv), args.ready_timeout)


def serve(args: argparse.Namespace, settings: Settings, report: "StartupReport | None" = None,
          argv: Sequence[str] = ()) -> int:
    """Hold the pid file, import the modules and run the master; `report` when daemonized."""
    from .master import Master, run_on_initialize  # the check command needs none of it

    with pidfile.held(settings.core.pid_file) as pid_file:
        try:
            prepare_master(args, settings, report, bind=True)
            process.set_title(process.master_title(settings.path))
            with running_module_code():
                run_on_initialize()
            master = Master(settings, overrides_from(args),
                            on_ready=report.ready if report is not None else None,
                            private_fds=[pid_file.fd] if pid_file is not None else [],
                            insecure_modules=args.insecure_modules, argv=argv, daemonized=report is not None)
            return master.run()
        finally:
            close_master_sockets(settings)


def close_master_sockets(settings: Settings | None) -> None:
    """The master's listening sockets, the per-slot SIP ones with them, as it exits."""
    if settings is not None and settings.sip is not None:
        from .sip import service as sip_service
        sip_service.close_master()
    listeners.close_listeners()


def resume(handover: reexec.Handover) -> int:
    """The master after its exec on an upgraded oversipd: adopt the hand-over, start the next generation.

    Nothing is bound and no pid file is created: both were handed over.  A
    failure to import the new code or of its on_initialize is the new
    generation's failure (the handed-over one serves on), not the daemon's.
    """
    from .master import Master, call_on_initialize

    pid_file = reexec_pid_file(handover)
    settings: Settings | None = None
    try:
        overrides = Overrides(**handover.overrides)
        settings = load_settings(handover.conf, overrides)
        logger.configure(settings.core.log_level, settings.core.syslog_facility if handover.daemonized else None)
        oversipd.config = settings
        process.set_title(process.master_title(settings.path))
        if settings.sip is not None:
            from .sip import service as sip_service  # registers the per-slot UDP sockets' part
        reexec.restore_parts(handover)
        if settings.sip is not None:
            sip_service.prepare_master_state(settings)
        master = Master(settings, overrides, private_fds=[pid_file.fd] if pid_file is not None else [],
                        insecure_modules=handover.insecure_modules, argv=handover.argv,
                        daemonized=handover.daemonized)
        master.adopt_handover(handover)
        listeners.warn_if_changed(listeners.bound_sections(), settings.listen, master)
        process.generation = handover.generation + 1  # what the new code sees in on_initialize
        failure = None
        try:
            with running_module_code():
                load_all(settings.core.modules_dir, settings.core.server_script, handover.insecure_modules)
                call_on_initialize()
        except BaseException as error:  # module code: anything, Launcher.fatal too
            from .generations import load_failure_line
            failure = load_failure_line(error)
        return master.run_after_exec(failure)
    finally:
        close_master_sockets(settings)
        if pid_file is not None:
            pid_file.release()


def reexec_pid_file(handover: reexec.Handover) -> pidfile.PidFile | None:
    """The pid file the old image held: same file, same lock (the flock lives on the open file)."""
    if handover.pid_file is None:
        return None
    pid_file = pidfile.PidFile(Path(handover.pid_file["path"]))
    pid_file.fd = handover.pid_file["fd"]
    return pid_file


def command_check(args: argparse.Namespace) -> int:
    settings = prepare_master(args)
    print(f"{settings.path}: configuration OK; {settings.core.workers} worker(s)")
    return EXIT_OK


def command_control(args: argparse.Namespace) -> int:
    from . import control_commands
    return control_commands.run(args)


def command_new_module(args: argparse.Namespace) -> int:
    from .scaffold import CREATED, create_module_distribution
    print(CREATED.format(path=create_module_distribution(args.name, args.dir, args.with_resource)))
    return EXIT_OK


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": command_run, "check": command_check,
    "reload": command_control, "stop": command_control, "status": command_control,
    "new-module": command_new_module, "user": user_commands.run,
}



def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; every user mistake becomes one line and exit status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        handover = reexec.pending()
        if handover is not None:  # this process is a master re-executed on an upgraded oversipd
            return resume(handover)
        args = parse_args(argv)
        if args.command == "run":
            return command_run(args, argv)
        return HANDLERS[args.command](args)
    except ConfigError as error:
        print(f"oversipd: {error.one_line()}", file=sys.stderr)
        return EXIT_USAGE
    except (StartupError, reexec.HandoverError) as error:
        print(f"oversipd: {error}", file=sys.stderr)
        return EXIT_FATAL
    except HaltServer as halt:
        return halt.status
    except KeyboardInterrupt:
        return EXIT_FATAL


def console_main() -> None:
    status = main()
    # The daemon has done its own cleanup; skipping interpreter shutdown
    # saves ~10 ms on every stop (PITFALLS).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
