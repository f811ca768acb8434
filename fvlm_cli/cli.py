"""The `fvlm` command. Only typer/rich are imported here: `fvlm --help` must stay fast.

Each subcommand lives in `fvlm_cli/commands/<name>.py` as a plain function with typed options;
those modules import torch and friends inside the function body, never at module level.
"""

from __future__ import annotations

import os
import sys

import typer

from fvlm_cli.commands import (bench, caption, compare_modes, config_cmd, dpo, precompute, profile, serve, speedrun, train,
                               upload, upload_shards)

app = typer.Typer(
    name="fvlm",
    help="Foveated video VLMs (one visual token per frame): precompute, train, dpo, bench, caption, compare-modes, serve, upload, upload-shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich costs ~80 ms of imports (SPEC: --help well under 0.5 s)
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    if debug:
        os.environ["FVLM_DEBUG"] = "1"


app.command("precompute")(precompute.precompute)
app.command("train")(train.train)
app.command("dpo")(dpo.dpo)
app.command("bench")(bench.bench)
app.command("caption", epilog=caption.EPILOG)(caption.caption)
app.command("compare-modes", epilog=compare_modes.EPILOG)(compare_modes.compare_modes)
app.command("upload")(upload.upload)
app.command("upload-shards")(upload_shards.upload_shards)
app.command("serve")(serve.serve)
app.command("speedrun")(speedrun.speedrun)
app.add_typer(config_cmd.app, name="config")
app.command("profile")(profile.profile)


def main() -> None:
    """Console entry point: user errors are one red line and exit 2; internal errors exit 1."""
    from fvlm_cli.errors import SIGNALS_RECEIVED, FvlmError, Terminated, storage_error

    debug = "--debug" in sys.argv or os.environ.get("FVLM_DEBUG") == "1"
    _terminate_like_ctrl_c()
    try:
        rv = app(standalone_mode=False)
        if isinstance(rv, int) and rv:  # typer returns 130 for Ctrl-C instead of raising
            if rv == 130 and SIGNALS_RECEIVED:  # typer turned a Terminated into 130 too
                _err("terminated")
                sys.exit(143)
            if rv == 130:
                _err("interrupted")
            sys.exit(rv)
    except FvlmError as e:
        if debug:
            raise
        _err(str(e))
        sys.exit(e.exit_code)
    except Terminated:
        _err("terminated")
        sys.exit(143)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException as e:  # click usage errors and internal errors
        # typer >= 0.2x vendors click as typer._click; older ones use click itself
        name = type(e).__name__
        if name == "Exit":
            sys.exit(getattr(e, "exit_code", 0))
        if name == "Abort":
            _err("aborted")
            sys.exit(1)
        if hasattr(e, "format_message") and any(c.__name__ == "ClickException" for c in type(e).__mro__):
            _err(e.format_message())
            sys.exit(2)
        if (full := storage_error(e)) is not None:  # disk full wherever it struck: one line, not "internal"
            _err(str(full))
            sys.exit(full.exit_code)
        if debug:
            raise
        _err(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
        sys.exit(1)


def _terminate_like_ctrl_c() -> None:
    import signal

    from fvlm_cli.errors import SIGNALS_RECEIVED, Terminated

    def raise_terminated(signum, frame):
        SIGNALS_RECEIVED.append(signum)
        raise Terminated()

    # `fvlm serve`: uvicorn installs its own graceful handler; training its own (save a checkpoint, then stop)
    signal.signal(signal.SIGTERM, raise_terminated)


def _err(msg: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # escaped: a message may hold brackets (pip install 'fvlm[serve]', a list) that rich would read as markup
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(msg)}")


if __name__ == "__main__":
    main()
