"""`medray token create|list|revoke`: the bearer tokens of the HTTP services."""

from medray.cli.main import main
from medray.security.tokens import load_tokens


def test_token_commands_print_the_token_once_and_never_list_it(tmp_path, capsys):
    path = str(tmp_path / "tokens.json")
    assert main(["token", "create", "--file", path, "--name", "clinic-a", "--scope", "clinic"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert load_tokens(path).authenticate(f"Bearer {token}").name == "clinic-a"
    assert main(["token", "list", "--file", path]) == 0
    listed = capsys.readouterr().out
    assert "clinic-a" in listed and token not in listed
    assert main(["token", "revoke", "--file", path, "--name", "clinic-a"]) == 0
    assert not load_tokens(path).by_hash
