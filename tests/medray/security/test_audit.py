"""medray.security.audit: the append-only, hash-chained audit log."""

import json
import multiprocessing

import pytest

from medray.security.audit import GENESIS, AuditError, AuditLog, verify_chain


def write_log(path, n=5, key=None):
    log = AuditLog(path, key=key)
    return [log.append({"client": "clinic-a", "status": 200, "study_ref": f"2.25.{i}"}) for i in range(n)]


def lines(path):
    return path.read_text().splitlines(keepends=True)


def test_entries_chain_and_verify(tmp_path):
    path = tmp_path / "audit.jsonl"
    entries = write_log(path)
    assert [e["seq"] for e in entries] == list(range(5))
    assert entries[0]["prev"] == GENESIS and entries[3]["prev"] == entries[2]["hash"]
    report = verify_chain(path)
    assert report.ok and report.entries == 5 and report.last_hash == entries[-1]["hash"]
    # A new writer (a restarted replica) continues the same chain.
    AuditLog(path).append({"client": "ops", "status": 200})
    assert verify_chain(path).entries == 6


def _edit(ls):
    ls[2] = ls[2].replace('"status":200', '"status":403')
    return ls


@pytest.mark.parametrize("tamper, line", [
    (_edit, 3),
    (lambda ls: ls[:2] + ls[3:], 3),  # removed
    (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], 2),  # reordered
    (lambda ls: ls[:1] + [ls[1]] + ls[1:], 3),  # duplicated
    (lambda ls: ls[:-1] + [ls[-1][:-10]], 5),  # cut mid-line
])
def test_any_edited_removed_or_reordered_line_is_detected(tmp_path, tamper, line):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    path.write_text("".join(tamper(lines(path))))
    report = verify_chain(path)
    assert not report.ok and report.line == line, report


def test_rehashing_an_edited_line_still_breaks_the_next_one(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    ls = lines(path)
    from medray.security.audit import entry_hash

    entry = json.loads(ls[1])
    entry["status"] = 500
    entry["hash"] = entry_hash(entry)
    ls[1] = json.dumps(entry) + "\n"
    path.write_text("".join(ls))
    assert verify_chain(path).line == 3


def test_keyed_chain_cannot_be_recomputed_without_the_key(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, key=b"k" * 32)
    assert verify_chain(path, key=b"k" * 32).ok
    assert not verify_chain(path).ok  # an unkeyed recomputation does not match


def test_cut_off_tail_is_detected_with_the_remembered_last_hash(tmp_path):
    path = tmp_path / "audit.jsonl"
    entries = write_log(path)
    path.write_text("".join(lines(path)[:-2]))
    assert verify_chain(path).ok
    assert not verify_chain(path, expect_last_hash=entries[-1]["hash"]).ok


def test_appending_after_a_damaged_line_is_refused(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    with path.open("a") as f:
        f.write('{"seq": 5, "cut')
    with pytest.raises(AuditError, match="medray audit verify"):
        AuditLog(path).append({"status": 200})
    with pytest.raises(ValueError, match="reserved"):
        AuditLog(tmp_path / "other.jsonl").append({"hash": "x"})


def _append_many(path, n):
    log = AuditLog(path)
    for i in range(n):
        log.append({"writer": multiprocessing.current_process().name, "i": i})


def test_concurrent_writers_in_several_processes_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, 50), name=f"w{i}") for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    report = verify_chain(path)
    assert report.ok and report.entries == 150, report

