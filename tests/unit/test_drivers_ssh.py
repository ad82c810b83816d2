"""SshDriver and normalize_public_key: the partner keys written to authorized_keys (forced onto
the replication command), the host keys pinned in known_hosts, and the ssh argument list.

Files live in tmp_path; the only real command is ssh-keygen (to make a key pair, and to check
that the files we write parse as OpenSSH key files)."""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys

import pytest

from vsnap.drivers import ssh as ssh_mod
from vsnap.drivers.runner import Runner
from vsnap.drivers.ssh import CIPHER, KEY_TYPES, SshDriver, normalize_public_key

# Real keys (made with ssh-keygen for these tests; public halves only).
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuH9wN9ZUgXshf6jc+vPfHTS4pKh0dKpeUn4UKb05fQ"
ECDSA256 = ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKLt7XkMdLLYriLXFKCyPbcoFkm"
            "+9wxAdvbe2H02bUGGwiVxycFS0s5xvtP64AD/tWqDdB5cXZ821wh9xeOSQgQ=")
ECDSA384 = ("ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBK6JKkMJCtZhs1r0PnEFjBn2TPzqR2"
            "AfNpPlMYRxIX0klMqFaWCaLjrq11pZBb26a0cTk62Dhhpufeo4lIzcake8hrHSNfCcg91kfE2iqneo84gkQW+iUSDsDM8fMd2RGg==")
ECDSA521 = ("ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAHmd3JsRoH2w0kR7B2wbz3wUIJA3i"
            "lXuBiNmZnS8IHKHfgGYxVyfabTMfEnth9jRworKFTuNbMIBgefR1xOWe+TmAEgzENUB0FxqX3pqc3v3+PFz3R+fzb7J7A3z9kKijfiE"
            "NpPhf/SL9H2zx+fio4h1bkui7HwbeaY4NPPhm13hwyhFA==")
RSA = ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCcvFYhAMIcFPdghTa0UDsAkWi2VimeFphWMW1IM54sj4arjTDKKqGSkQgEr0ECKcir"
       "gXSRyW+o3TvpKZNQUFG6diQ/hdMY3nUtJSxpTZ6XQPrAtqN2fCxsDiLXo1Wq+yGQauchqjRoVJbi+B8euz+mivaHB1KhzcqvaUZPy3iWij"
       "zpQFbV1vapg0eta6Ff3MtIC5yo84FbnpZCSUJNCeMEK/6zwgSqlu8SezCceLBxp+ESOh154cy2AvEjzIvLZC/8UYXxIiHtFeJffm2bysYV"
       "bZydT/RcNhcH8SBh8ZsozT/jn0UI1uXyhtGMVQpOvoET5+E/mjAdht+NPAVqHb3y1eji89az4qCHr/CwXHcfXpIKiSPHkfEPwPvBLh02JX"
       "OOR8uhSkXVuK1Qi4RV1WcqlzlDkXFK3Sw2vS3lxvaSYD5ccTFUrIzarhsPLJS7tN71e8g3pQq1O+u23fOKYv3fiMvh6TAhAu41a3kpXh+V"
       "0DKld4zg+0rn/cNzLBD/dAs=")
DSA = ("ssh-dss AAAAB3NzaC1kc3MAAACBAN+poJjuyb+kxCNDPJFcoXQWaRecp+MMXqK8vy8whLy86c8SoOs+StR6Dzb9b7VTLXIg732yN6R8"
       "hnBsWR9NQRJEjyLXNtbHgYYQFPNI4bpQGq9+4VJ1JLeq92e2B9TkVCmaQyd+z6m/xDsX27btv8ZjAjP+sGtGTuzw0S6phvhLAAAAFQCAHM"
       "NJZuP+IETvtzkCNniEyH/kEwAAAIA0mZVdSzYvAPLQvPiJWRUcCOUAsKq8QeHrJhBRuXWCbEY9Q65+0930aB1nDXRWFOs5Hw/Ku6XVdGqY"
       "L+qDBE2858D8T54gy9b9u4VV+qktm1EPAKSI5g8hndDh9e6ZvhALmo7NxaWp7Lwj4BaVSxICdkbMPEa3tD46VLAkC0D0HAAAAIA4j/EabA"
       "bfYJnXtOqEILZnNaxGUrqIVKyVmYAFMTNi8N2BUVBgZg1NVPj2vHrD46vVPfLfF+lLzKja72ycdjCqg9z8sCqnOykcB3D/j+l1yQINy9Mp"
       "yNDLCn7RD28AwjZ/cpfnOIDP3BsdC7lUw4fPTCID/UPal2jm8CVde/uugA==")
ALL_KEYS = [ED25519, ECDSA256, ECDSA384, ECDSA521, RSA]

P1 = "0123456789abcdef0123456789abcdef"
P2 = "fedcba9876543210fedcba9876543210"
COMMAND = [sys.executable, "-m", "vsnap.worker.serve", "--state", "/var/lib/vsnap", "--partner", P1]


def sshd_dequote(text: str) -> tuple[str, str]:
    """What sshd makes of a quoted option value: a port of opt_dequote() in OpenSSH's
    auth-options.c, where `\\"` is the only escape (any other backslash stays as it is).
    Returns the value and the rest of the line after the closing quote."""
    assert text.startswith('"'), text
    out, i = [], 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] == '"':
            i += 1
        out.append(text[i])
        i += 1
    if i >= len(text):
        raise ValueError("missing end quote")
    return "".join(out), text[i + 1:]


def parse_authorized_line(line: str) -> tuple[str, str, str]:
    """(forced command as sshd reads it, key, comment) of one of our authorized_keys lines."""
    prefix = "restrict,command="
    assert line.startswith(prefix), line
    command, rest = sshd_dequote(line[len(prefix):])
    assert rest.startswith(" "), rest  # the options end at the closing quote
    kind, blob, comment = rest[1:].split(" ", 2)
    return command, f"{kind} {blob}", comment


def lines(path) -> list[str]:
    return path.read_text().splitlines()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def ssh_dir(tmp_path):
    return tmp_path / "ssh"


@pytest.fixture
def drv(ssh_dir, tmp_path, fake_runner):
    return SshDriver(fake_runner, ssh_dir, [tmp_path / "missing.pub", tmp_path / "host.pub"])


# =============================================================================================
# normalize_public_key
# =============================================================================================

@pytest.mark.parametrize("key", ALL_KEYS)
@pytest.mark.parametrize("suffix", ["", " ", "\n", " comment", " user@host", " a comment with spaces\n",
                                    "\tcomment"])
def test_normalize_accepts_supported_keys_and_drops_the_comment(key, suffix):
    assert normalize_public_key(key + suffix) == key


@pytest.mark.parametrize("key", ALL_KEYS)
def test_normalize_accepts_surrounding_whitespace(key):
    assert normalize_public_key(f"  {key} c  \n") == key


def test_normalize_covers_every_supported_type():
    assert {k.split()[0] for k in ALL_KEYS} == set(KEY_TYPES)


def _ed(blob_suffix=""):
    return ED25519 + blob_suffix


@pytest.mark.parametrize("text", [
    "",
    " ",
    "\n",
    "ssh-ed25519",
    "ssh-ed25519 ",
    ED25519.split()[1],                                             # blob only
    DSA,                                                            # unsupported type
    "ssh-ed448 " + ED25519.split()[1],
    "SSH-ED25519 " + ED25519.split()[1],                            # types are lower case
    "sk-ssh-ed25519@openssh.com " + ED25519.split()[1],
    "ssh-ed25519-cert-v01@openssh.com " + ED25519.split()[1],
    # options in front of the key: these would be honoured by sshd
    'command="/bin/sh" ' + ED25519,
    'restrict,command="id" ' + ED25519,
    "no-pty " + ED25519,
    'from="*" ' + ED25519,
    "environment=\"LD_PRELOAD=/tmp/x\" " + ED25519,
    "@cert-authority " + ED25519,
    "@revoked " + ED25519,
    "vsnap-partner-" + P1 + " " + ED25519,                          # a known_hosts line
    # bad characters in the blob
    "ssh-ed25519 AAAA$(id)",
    "ssh-ed25519 AAAA;id",
    "ssh-ed25519 AAAA\"x",
    "ssh-ed25519 AAAA,command=x",
    "ssh-ed25519 AAAA-_",                                            # url-safe base64 is not OpenSSH's
    "ssh-ed25519 AAAA====",                                          # too much padding
    "ssh-ed25519 =AAAA",
    "ssh-ed25519 AAAA\x00",
    "ssh-ed25519 AAAA\u00e9",
    "ssh-ed25519 \uff21\uff21\uff21\uff21",                          # full-width letters
    "ssh-ed25519\x00 " + ED25519.split()[1],
    # a huge input
    ED25519 + " " + "c" * 20000,
    ED25519 + "\n" * 20000,
    "ssh-ed25519 " + "A" * 20000,
])
def test_normalize_refuses(text):
    with pytest.raises(ValueError):
        normalize_public_key(text)


@pytest.mark.parametrize("value", [None, 5, 1.5, True, b"ssh-ed25519 AAAA", ED25519.encode(), [ED25519],
                                   {"key": ED25519}, ("ssh-ed25519", "AAAA")])
def test_normalize_refuses_non_strings(value):
    with pytest.raises(ValueError):
        normalize_public_key(value)


@pytest.mark.parametrize("text", [
    ED25519 + "\n" + RSA + " second-key",
    ED25519 + " c\n" + 'command="/bin/sh" ' + RSA,
    ED25519 + " c\r\nssh-rsa AAAA evil",
    ED25519 + " c\rx",
    ED25519 + " c\x0bx\x0cy",
    ED25519 + " c\u2028" + RSA,
    "ssh-ed25519\n" + ED25519.split()[1],
])
def test_normalize_never_lets_a_second_line_or_option_through(text):
    """A value with line breaks is either refused or reduced to the one `<type> <blob>` it
    starts with: nothing after the first key may reach the files."""
    try:
        result = normalize_public_key(text)
    except ValueError:
        return
    assert result == ED25519
    assert result.isprintable() and "\n" not in result and "\r" not in result


def test_normalize_result_is_a_single_printable_line():
    for key in ALL_KEYS:
        out = normalize_public_key(f"{key} comment")
        assert out.isprintable() and len(out.split(" ")) == 2


def test_normalize_size_limit_is_about_the_input():
    # A long comment within the limit is fine; past it the input is refused.
    assert normalize_public_key(ED25519 + " " + "c" * 16000) == ED25519
    with pytest.raises(ValueError):
        normalize_public_key(ED25519 + " " + "c" * 16400)


# =============================================================================================
# our key pair and host key
# =============================================================================================

class CountingRunner(Runner):
    def __init__(self):
        super().__init__(timeout=30)
        self.argvs: list[list[str]] = []

    def run(self, argv, **kwargs):
        self.argvs.append(list(argv))
        return super().run(argv, **kwargs)


def test_public_key_is_made_once_with_ssh_keygen(tmp_path):
    runner = CountingRunner()
    ssh_dir = tmp_path / "state" / "ssh"
    drv = SshDriver(runner, ssh_dir, [])
    first = drv.public_key()
    assert first.startswith("ssh-ed25519 ") and len(first.split()) == 2
    assert normalize_public_key(first) == first
    assert drv.key_path.exists() and (ssh_dir / "repl_ed25519.pub").exists()
    assert mode(ssh_dir) == 0o700
    assert mode(drv.key_path) == 0o600  # ssh refuses a private key others can read
    (argv,) = runner.argvs
    assert argv[0] == "ssh-keygen" and argv[argv.index("-t") + 1] == "ed25519"
    assert argv[argv.index("-N") + 1] == "" and argv[argv.index("-f") + 1] == str(drv.key_path)
    # Second use: the same key, no new ssh-keygen.
    assert drv.public_key() == first
    assert SshDriver(runner, ssh_dir, []).public_key() == first
    assert len(runner.argvs) == 1


def test_public_key_uses_an_existing_key_without_running_anything(tmp_path, fake_runner):
    runner = fake_runner  # any command would fail the test
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    (ssh_dir / "repl_ed25519").write_text("private\n")
    (ssh_dir / "repl_ed25519.pub").write_text(ED25519 + " vsnap-replication\n")
    assert SshDriver(runner, ssh_dir, []).public_key() == ED25519
    assert runner.calls == []


def test_public_key_ssh_keygen_failure_surfaces(tmp_path, fake_runner):
    from vsnap.drivers.runner import CommandError
    runner = fake_runner.on(["ssh-keygen"], returncode=1, stderr="boom")
    with pytest.raises(CommandError):
        SshDriver(runner, tmp_path / "ssh", []).public_key()


def test_host_key_first_existing_file(tmp_path, fake_runner):
    a, b, c = tmp_path / "a.pub", tmp_path / "b.pub", tmp_path / "c.pub"
    b.write_text(ECDSA256 + " root@host\n")
    c.write_text(ED25519 + "\n")
    assert SshDriver(fake_runner, tmp_path, [a, b, c]).host_key() == ECDSA256
    assert SshDriver(fake_runner, tmp_path, [c, b]).host_key() == ED25519


def test_host_key_missing(tmp_path, fake_runner):
    with pytest.raises(FileNotFoundError, match="a.pub"):
        SshDriver(fake_runner, tmp_path, [tmp_path / "a.pub"]).host_key()
    with pytest.raises(FileNotFoundError):
        SshDriver(fake_runner, tmp_path, []).host_key()


def test_host_key_that_is_not_a_key(tmp_path, fake_runner):
    (tmp_path / "a.pub").write_text('command="x" ' + ED25519)
    with pytest.raises(ValueError):
        SshDriver(fake_runner, tmp_path, [tmp_path / "a.pub"]).host_key()


# =============================================================================================
# authorize / deauthorize
# =============================================================================================

def test_authorize_writes_one_restricted_line(drv):
    drv.authorize(P1, ED25519 + " partner-comment", COMMAND)
    (line,) = lines(drv.authorized_keys)
    assert line.startswith('restrict,command="')
    assert line.endswith(f" {ED25519} vsnap-partner:{P1}")
    command, key, comment = parse_authorized_line(line)
    assert key == ED25519 and comment == f"vsnap-partner:{P1}"
    assert shlex.split(command) == COMMAND
    assert "partner-comment" not in line
    assert drv.is_authorized(P1) and not drv.is_authorized(P2)


def test_authorize_file_is_0600_and_parses_with_ssh_keygen(drv):
    drv.authorize(P1, ED25519, COMMAND)
    drv.authorize(P2, RSA, COMMAND[:-1] + [P2])
    assert mode(drv.authorized_keys) == 0o600
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(drv.authorized_keys)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.splitlines()
    assert len(listed) == 2
    assert f"vsnap-partner:{P1} (ED25519)" in listed[0] and f"vsnap-partner:{P2} (RSA)" in listed[1]


def test_authorize_replaces_the_partners_line(drv):
    drv.authorize(P1, ED25519, COMMAND)
    drv.authorize(P2, ECDSA256, COMMAND[:-1] + [P2])
    drv.authorize(P1, RSA, COMMAND + ["--again"])
    got = lines(drv.authorized_keys)
    assert len(got) == 2
    mine = [parse_authorized_line(x) for x in got if x.endswith(f"vsnap-partner:{P1}")]
    assert len(mine) == 1
    assert mine[0][1] == RSA and shlex.split(mine[0][0]) == COMMAND + ["--again"]
    other = [parse_authorized_line(x) for x in got if x.endswith(f"vsnap-partner:{P2}")]
    assert other[0][1] == ECDSA256


def test_authorize_keeps_foreign_lines_untouched(drv):
    foreign = [
        "# the admin's keys",
        f"{RSA} admin@laptop",
        "",
        f'from="10.0.0.0/8" {ECDSA384} backup vsnap-partner:{P1} (old)',  # the id, not at the end
        f"{ED25519} vsnap-partner:{P1}x",                                 # not exactly the mark
        f"{ECDSA521} {P1}",
        f"vsnap-partner-{P2} {ED25519}",
        "  some line with trailing spaces   ",
    ]
    drv.ssh_dir.mkdir(parents=True)
    drv.authorized_keys.write_text("\n".join(foreign) + "\n")
    drv.authorize(P1, ED25519, COMMAND)
    got = lines(drv.authorized_keys)
    assert got[:len(foreign)] == foreign
    assert len(got) == len(foreign) + 1 and got[-1].endswith(f"vsnap-partner:{P1}")
    drv.deauthorize(P1)
    assert lines(drv.authorized_keys) == foreign


def test_authorize_file_without_trailing_newline(drv):
    drv.ssh_dir.mkdir(parents=True)
    drv.authorized_keys.write_text(f"{RSA} admin")
    drv.authorize(P1, ED25519, COMMAND)
    got = lines(drv.authorized_keys)
    assert got[0] == f"{RSA} admin" and got[1].endswith(f"vsnap-partner:{P1}")
    assert drv.authorized_keys.read_text().endswith("\n")


def test_deauthorize_removes_only_that_partner(drv):
    drv.authorize(P1, ED25519, COMMAND)
    drv.authorize(P2, RSA, COMMAND[:-1] + [P2])
    drv.deauthorize(P1)
    (line,) = lines(drv.authorized_keys)
    assert line.endswith(f"vsnap-partner:{P2}")
    assert not drv.is_authorized(P1) and drv.is_authorized(P2)
    assert mode(drv.authorized_keys) == 0o600
    drv.deauthorize(P1)  # again: nothing to do
    assert lines(drv.authorized_keys) == [line]
    drv.deauthorize(P2)
    assert drv.authorized_keys.read_text() == ""


def test_deauthorize_and_is_authorized_without_a_file(drv):
    drv.deauthorize(P1)
    assert not drv.authorized_keys.exists()
    assert drv.is_authorized(P1) is False


@pytest.mark.parametrize("key", ['command="/bin/sh" ' + ED25519, DSA, "", "ssh-ed25519 AAAA$(id)", None,
                                 ED25519.split()[1]])
def test_authorize_refuses_bad_keys_and_writes_nothing(drv, key):
    drv.ssh_dir.mkdir(parents=True)
    drv.authorized_keys.write_text(f"{RSA} admin\n")
    with pytest.raises(ValueError):
        drv.authorize(P1, key, COMMAND)
    assert lines(drv.authorized_keys) == [f"{RSA} admin"]


def test_authorize_with_a_multiline_key_writes_one_line(drv):
    drv.authorize(P1, ED25519 + " c\n" + 'command="/bin/sh" ' + RSA, COMMAND)
    (line,) = lines(drv.authorized_keys)
    assert parse_authorized_line(line)[1] == ED25519
    assert "/bin/sh" not in line


STATE_DIRS = [
    "/var/lib/vsnap",
    "/srv/with space/vsnap",
    "/srv/it's/vsnap",
    '/srv/double"quote/vsnap',
    "/srv/$(touch pwned)/`id`;rm -rf x|y&z",
    "/srv/tab\there",
    "/srv/ünïcode",
    "/srv/\"'mixed' \"quotes\"",
    "/srv/back\\slash/vsnap",
    "/srv/trailing\\",
    "/srv/\\\"both\\\"",
]


@pytest.mark.parametrize("state_dir", STATE_DIRS)
def test_forced_command_survives_sshd_parsing(drv, state_dir):
    command = [sys.executable, "-m", "vsnap.worker.serve", "--state", state_dir, "--partner", P1]
    drv.authorize(P1, ED25519, command)
    (line,) = lines(drv.authorized_keys)
    forced, key, comment = parse_authorized_line(line)
    assert key == ED25519 and comment == f"vsnap-partner:{P1}"
    assert forced == shlex.join(command)
    assert shlex.split(forced) == command


@pytest.mark.parametrize("state_dir", ["/srv/with space", "/srv/it's", '/srv/dq"x', "/srv/$(id)"])
def test_forced_command_runs_as_the_shell_would(drv, state_dir, tmp_path):
    """sshd hands the forced command to the user's shell (`sh -c`): the words the serve command
    gets are exactly ours."""
    command = [sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", "--state", state_dir]
    drv.authorize(P1, ED25519, command)
    forced, _, _ = parse_authorized_line(lines(drv.authorized_keys)[0])
    out = subprocess.run(["sh", "-c", forced], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["--state", state_dir]


# =============================================================================================
# pin_host_key / unpin_host_key
# =============================================================================================

def test_pin_host_key_uses_the_partner_alias(drv):
    drv.pin_host_key(P1, ECDSA256 + " root@partner\n")
    assert lines(drv.known_hosts) == [f"vsnap-partner-{P1} {ECDSA256}"]
    assert mode(drv.known_hosts) == 0o600
    out = subprocess.run(["ssh-keygen", "-F", f"vsnap-partner-{P1}", "-f", str(drv.known_hosts)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and ECDSA256 in out.stdout
    miss = subprocess.run(["ssh-keygen", "-F", f"vsnap-partner-{P2}", "-f", str(drv.known_hosts)],
                          capture_output=True, text=True)
    assert miss.returncode != 0


def test_pin_replaces_and_unpin_removes_only_that_partner(drv):
    drv.ssh_dir.mkdir(parents=True)
    foreign = ["github.com " + ED25519, f"# vsnap-partner-{P1} note", f"host-vsnap-partner-{P1} {RSA}",
               f"[10.0.0.1]:22 {ECDSA256} vsnap-partner-{P1}"]
    drv.known_hosts.write_text("\n".join(foreign) + "\n")
    drv.pin_host_key(P1, ED25519)
    drv.pin_host_key(P2, RSA)
    drv.pin_host_key(P1, ECDSA384)
    got = lines(drv.known_hosts)
    assert got[:len(foreign)] == foreign
    assert sorted(got[len(foreign):]) == sorted([f"vsnap-partner-{P1} {ECDSA384}", f"vsnap-partner-{P2} {RSA}"])
    drv.unpin_host_key(P1)
    assert lines(drv.known_hosts) == foreign + [f"vsnap-partner-{P2} {RSA}"]
    drv.unpin_host_key(P2)
    assert lines(drv.known_hosts) == foreign
    assert mode(drv.known_hosts) == 0o600


def test_unpin_without_a_file(drv):
    drv.unpin_host_key(P1)
    assert not drv.known_hosts.exists()


@pytest.mark.parametrize("key", ["", DSA, "@cert-authority * " + ED25519, "* " + ED25519, None])
def test_pin_refuses_bad_keys(drv, key):
    with pytest.raises(ValueError):
        drv.pin_host_key(P1, key)
    assert not drv.known_hosts.exists()


def test_known_hosts_and_authorized_keys_are_separate(drv):
    drv.authorize(P1, ED25519, COMMAND)
    drv.pin_host_key(P1, RSA)
    drv.unpin_host_key(P1)
    assert drv.is_authorized(P1)
    drv.pin_host_key(P1, RSA)
    drv.deauthorize(P1)
    assert lines(drv.known_hosts) == [f"vsnap-partner-{P1} {RSA}"]


# =============================================================================================
# atomic writes
# =============================================================================================

def test_writes_replace_the_file_not_rewrite_it(drv):
    drv.authorize(P1, ED25519, COMMAND)
    before = os.stat(drv.authorized_keys).st_ino
    os.chmod(drv.authorized_keys, 0o644)
    drv.authorize(P2, RSA, COMMAND)
    assert os.stat(drv.authorized_keys).st_ino != before  # a new file renamed over the old one
    assert mode(drv.authorized_keys) == 0o600
    assert sorted(os.listdir(drv.ssh_dir)) == ["authorized_keys"]  # no temporary files left


@pytest.mark.parametrize("action", [
    lambda d: d.authorize(P2, RSA, COMMAND),
    lambda d: d.deauthorize(P1),
    lambda d: d.pin_host_key(P2, RSA),
    lambda d: d.unpin_host_key(P1),
])
def test_failed_write_leaves_the_old_file_and_no_temporary(drv, monkeypatch, action):
    drv.authorize(P1, ED25519, COMMAND)
    drv.pin_host_key(P1, ED25519)
    keys_before, hosts_before = drv.authorized_keys.read_text(), drv.known_hosts.read_text()

    def boom(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ssh_mod.os, "replace", boom)
    with pytest.raises(OSError):
        action(drv)
    monkeypatch.undo()
    assert drv.authorized_keys.read_text() == keys_before
    assert drv.known_hosts.read_text() == hosts_before
    assert sorted(os.listdir(drv.ssh_dir)) == ["authorized_keys", "known_hosts"]


def test_write_creates_the_ssh_dir(tmp_path, fake_runner):
    drv = SshDriver(fake_runner, tmp_path / "a" / "b", [])
    drv.pin_host_key(P1, ED25519)
    assert lines(drv.known_hosts) == [f"vsnap-partner-{P1} {ED25519}"]


# =============================================================================================
# partner ids
# =============================================================================================

BAD_IDS = ["", "0123456789ABCDEF0123456789ABCDEF", P1[:-1], P1 + "0", P1[:-1] + "g", "../" + P1[3:],
           P1 + "\n", "\n" + P1[1:], P1[:16] + " " + P1[17:], "*", None, 5, ["x"], P1.encode()]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("action", [
    lambda d, p: d.authorize(p, ED25519, COMMAND),
    lambda d, p: d.deauthorize(p),
    lambda d, p: d.is_authorized(p),
    lambda d, p: d.pin_host_key(p, ED25519),
    lambda d, p: d.unpin_host_key(p),
    lambda d, p: d.command(p, "10.0.0.2", 22, ["info"]),
], ids=["authorize", "deauthorize", "is_authorized", "pin", "unpin", "command"])
def test_invalid_partner_ids_are_refused(drv, bad, action):
    drv.authorize(P1, ED25519, COMMAND)
    drv.pin_host_key(P1, ED25519)
    keys_before, hosts_before = drv.authorized_keys.read_text(), drv.known_hosts.read_text()
    with pytest.raises(ValueError):
        action(drv, bad)
    assert drv.authorized_keys.read_text() == keys_before
    assert drv.known_hosts.read_text() == hosts_before


# =============================================================================================
# command()
# =============================================================================================

def _option(argv: list[str], name: str) -> str:
    values = [argv[i + 1].split("=", 1)[1] for i, a in enumerate(argv[:-1])
              if a == "-o" and argv[i + 1].split("=", 1)[0] == name]
    assert len(values) == 1, (name, values)
    return values[0]


def test_command_argv(tmp_path, fake_runner):
    drv = SshDriver(fake_runner, tmp_path / "ssh", [], user="repl", connect_timeout=7)
    argv = drv.command(P1, "10.0.0.2", 8922, ["recv", P2, "snap-1", "full"])
    assert argv[0] == "ssh"
    dd = argv.index("--")
    assert argv[dd + 1] == "repl@10.0.0.2"
    assert argv[dd + 2:] == ["recv", P2, "snap-1", "full"]  # the remote words come last
    opts = argv[:dd]
    assert "-T" in opts
    assert opts[opts.index("-i") + 1] == str(drv.key_path)
    assert opts[opts.index("-p") + 1] == "8922"
    assert opts[opts.index("-c") + 1] == CIPHER
    assert _option(opts, "StrictHostKeyChecking") == "yes"
    assert _option(opts, "BatchMode") == "yes"
    assert _option(opts, "IdentitiesOnly") == "yes"
    assert _option(opts, "UserKnownHostsFile") == str(drv.known_hosts)
    assert _option(opts, "GlobalKnownHostsFile") == "/dev/null"
    assert _option(opts, "HostKeyAlias") == f"vsnap-partner-{P1}"
    assert _option(opts, "ConnectTimeout") == "7"
    assert all(isinstance(a, str) for a in argv)


def test_command_puts_option_like_addresses_and_words_after_the_separator(drv):
    argv = drv.command(P1, "-oProxyCommand=touch x", 22, ["-oProxyCommand=y", "info"])
    dd = argv.index("--")
    assert argv[dd + 1] == "root@-oProxyCommand=touch x"
    assert argv[dd + 2:] == ["-oProxyCommand=y", "info"]
    assert not any("ProxyCommand" in a for a in argv[:dd])


def test_command_port_is_a_number(drv):
    argv = drv.command(P1, "h", "2222", [])
    assert argv[argv.index("-p") + 1] == "2222"
    with pytest.raises(ValueError):
        drv.command(P1, "h", "22 -oProxyCommand=x", [])


def test_command_default_user_is_root(drv):
    argv = drv.command(P2, "partner.example.com", 22, ["info"])
    assert argv[-2:] == ["root@partner.example.com", "info"]
    assert _option(argv, "HostKeyAlias") == f"vsnap-partner-{P2}"


def test_a_key_directory_made_open_by_others_is_closed(tmp_path, fake_runner):
    # The lab (or an older release) made the directory with the default 0755.
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir(mode=0o755)
    os.chmod(ssh_dir, 0o755)
    (ssh_dir / "repl_ed25519").write_text("private\n")
    (ssh_dir / "repl_ed25519.pub").write_text(ED25519 + " vsnap-replication\n")
    drv = SshDriver(fake_runner, ssh_dir, [])
    drv.public_key()
    assert mode(ssh_dir) == 0o700
    os.chmod(ssh_dir, 0o755)
    drv.pin_host_key("0123456789abcdef0123456789abcdef", ED25519)
    assert mode(ssh_dir) == 0o700 and mode(drv.known_hosts) == 0o600
