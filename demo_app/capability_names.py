"""Linux capability bit numbers to names (linux/capability.h), for display."""

from __future__ import annotations

from typing import List

NAMES = (
    'chown', 'dac_override', 'dac_read_search', 'fowner', 'fsetid', 'kill', 'setgid',
    'setuid', 'setpcap', 'linux_immutable', 'net_bind_service', 'net_broadcast',
    'net_admin', 'net_raw', 'ipc_lock', 'ipc_owner', 'sys_module', 'sys_rawio',
    'sys_chroot', 'sys_ptrace', 'sys_pacct', 'sys_admin', 'sys_boot', 'sys_nice',
    'sys_resource', 'sys_time', 'sys_tty_config', 'mknod', 'lease', 'audit_write',
    'audit_control', 'setfcap', 'mac_override', 'mac_admin', 'syslog', 'wake_alarm',
    'block_suspend', 'audit_read', 'perfmon', 'bpf', 'checkpoint_restore',
)


def cap_names(mask: int) -> List[str]:
    """``cap_*`` names of the bits set in ``mask`` (unknown bits as ``cap_<n>``)."""
    out = []
    for bit in range(64):
        if mask >> bit & 1:
            out.append('cap_' + (NAMES[bit] if bit < len(NAMES) else str(bit)))
    return out
