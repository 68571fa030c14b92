"""The two CLIs: ``claude-db`` (db.py) and ``claude-session`` (session.py).

Their console scripts start here, in a module that loads nothing else first. Until
``common.run`` takes the signals over (an interrupt then runs the command's cleanup: exit
130), a Ctrl-C ends a program that is still loading as SIGTERM and SIGHUP do: by the
signal's own action (a shell shows 130), not with a traceback of half-loaded modules.
"""

from __future__ import annotations

import signal


def claude_db() -> None:
    _end_by_signal_while_loading()
    from claude_db.cli.db import main  # late: this load is what a Ctrl-C may end

    main()


def claude_session() -> None:
    _end_by_signal_while_loading()
    from claude_db.cli.session import main  # late: this load is what a Ctrl-C may end

    main()


def _end_by_signal_while_loading() -> None:
    # Python's own handler only: an ignored SIGINT (`cmd &` in a script) stays ignored
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
