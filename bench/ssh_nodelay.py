"""Which `ssh -R` invocation really gets TCP_NODELAY, read off the live sockets (not on faith).

Each variant is a separate ssh connection to the plain `ssh -R` target's sshd, forwarding to the
nginx origin; once it carries a request, the flag is read from the ssh client's socket and from
the sshd processes that appeared for it (processes.tcp_nodelay_flags), and the client is stopped.
"""

from __future__ import annotations

from load import Endpoint, probe_status
from processes import (
    BenchError,
    free_port,
    process_name,
    process_tree,
    tcp_nodelay_flags,
    wait_until,
)
from targets import READY_TIMEOUT_S, RunContext, SshReverse


def _probe_variant(
    context: RunContext, plain: SshReverse, label: str, interactive: bool, extra: list[str]
) -> dict[str, object]:
    if plain.keys is None or plain.sshd is None:
        raise BenchError("ssh -R target not running")
    sshd, sshd_port = plain.sshd, plain.sshd_port
    probe = SshReverse(name="probe", label=label, interactive=interactive, sshd_port=sshd_port)
    forward_port = free_port()
    forward = f"127.0.0.1:{forward_port}:127.0.0.1:{context.origins.nginx_port}"
    before = set(process_tree(sshd.pid))
    client = context.group.start(
        "ssh-probe", probe.client_argv(plain.keys, forward, extra), keep_stdin_open=interactive
    )
    try:
        endpoint = Endpoint(forward_port, None)
        wait_until(
            lambda: probe_status(endpoint, "/small") == 200,
            timeout_s=READY_TIMEOUT_S,
            what=label,
            watch=[client],
        )
        if interactive:
            wait_until(
                lambda: any(
                    process_name(pid) == "sleep" for pid in set(process_tree(sshd.pid)) - before
                ),
                timeout_s=READY_TIMEOUT_S,
                what=label,
                watch=[client],
            )
        new_pids = sorted(set(process_tree(sshd.pid)) - before)
        return {
            "client_nodelay": tcp_nodelay_flags(client.pid, sshd_port),
            "server_nodelay": [
                flag for pid in new_pids for flag in tcp_nodelay_flags(pid, sshd_port)
            ],
        }
    finally:
        context.group.stop(client)


def probe_ssh_nodelay_variants(context: RunContext, plain: SshReverse) -> dict[str, object]:
    """Which ssh invocation really gets TCP_NODELAY: read the flag off the live sockets.

    Checks plain `-N`, `-N -o IPQoS=lowdelay` (only sets the DSCP class) and `-tt` with a remote
    command (an interactive session), each as a separate connection to the plain target's sshd.
    """
    variants: dict[str, tuple[bool, list[str]]] = {
        "ssh -N -R": (False, []),
        "ssh -N -R -o IPQoS=lowdelay": (False, ["-o", "IPQoS=lowdelay"]),
        "ssh -tt -R ... 'exec sleep infinity'": (True, []),
    }
    results: dict[str, object] = {}
    for label, (interactive, extra) in variants.items():
        try:
            results[label] = _probe_variant(context, plain, label, interactive, extra)
        except BenchError as error:
            results[label] = {"error": str(error)}
    return results
