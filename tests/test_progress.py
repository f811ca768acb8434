"""The shared progress display: plain lines off a terminal (done/total, failed, rate, ETA), silent when disabled."""

from fvlm_cli.progress import Progress


def test_plain_lines_report_done_failed_and_resume(capsys):
    p = Progress(enabled=True, prefix="fvlm test", every=3600, unit="samples")
    p.add("set", total=4, completed=1)
    p.advance("set", 2, failed=1)      # not logged yet: interval not reached
    p.advance("set", 1)                # reaches the total: logged
    p.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("[fvlm test] set: 1/4 (resuming)")
    assert err[-1].startswith("[fvlm test] set: 4/4, 1 failed,")
    assert "samples/s" in err[-1] and "ETA" not in err[-1]
    assert len(err) == 2


def test_unknown_total_and_disabled(capsys):
    p = Progress(enabled=True, every=0)
    p.add("x")
    p.advance("x", 3)
    assert "x: 3," in capsys.readouterr().err
    p.set_total("x", 10)
    assert p.tasks["x"].eta() is not None
    assert "x: 3/10," in capsys.readouterr().err
    q = Progress(enabled=False, every=0)
    q.add("y", 2)
    q.advance("y", 2)
    q.close()
    assert capsys.readouterr().err == ""
