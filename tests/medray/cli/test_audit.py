"""`medray audit verify PATH`: exit 0 when the chain holds, 1 at the first broken line."""

from medray.cli.main import main
from medray.security.audit import AuditLog


def test_verify_command_exit_codes(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(5):
        log.append({"client": "clinic-a", "status": 200, "study_ref": f"2.25.{i}"})
    assert main(["audit", "verify", str(path)]) == 0
    assert "ok: 5 entries" in capsys.readouterr().out
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"status":200', '"status":403')
    path.write_text("".join(lines))
    assert main(["audit", "verify", str(path)]) == 1
    assert "line 3" in capsys.readouterr().out
