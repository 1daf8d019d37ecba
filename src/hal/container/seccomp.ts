// The seccomp profile of every container qube (documented in docs/threat-model.md).
//
// Allow by default, refuse the kernel interfaces a compartment has no business using: they are
// either global (time, modules, swap, reboot, keyrings), a large attack surface (bpf,
// perf_event_open, userfaultfd, io_uring), or a way to build new namespaces and mounts inside
// the qube (mount API, unshare/setns, clone with namespace flags). Most are also refused by the
// missing capabilities; the profile makes the refusal independent of them. Only the host's native
// syscall ABI is allowed (no i386/x32 entry points), and clone3 answers ENOSYS so libc falls
// back to clone, where the namespace flags can be inspected. socket(2) refuses address families a
// qube does not need, vsock first (it is not network-namespaced).

const EPERM = 1;
const ENOSYS = 38;
const EAFNOSUPPORT = 97;

/** Syscalls refused outright with EPERM. */
export const DENIED_SYSCALLS: readonly string[] = [
  // kernel keyrings
  'add_key', 'keyctl', 'request_key',
  // modules, kexec, reboot, swap, accounting, kernel log
  'init_module', 'finit_module', 'delete_module', 'kexec_load', 'kexec_file_load', 'reboot',
  'swapon', 'swapoff', 'acct', 'syslog',
  // the host's clock
  'settimeofday', 'clock_settime', 'clock_adjtime', 'adjtimex',
  // mounts and namespaces
  'mount', 'umount2', 'pivot_root', 'move_mount', 'open_tree', 'fsopen', 'fsconfig', 'fsmount',
  'fspick', 'mount_setattr', 'unshare', 'setns', 'chroot',
  // large kernel attack surface
  'bpf', 'perf_event_open', 'userfaultfd', 'io_uring_setup', 'io_uring_enter',
  'io_uring_register', 'fanotify_init', 'lookup_dcookie', 'uselib', 'ustat', 'sysfs',
  'open_by_handle_at', 'name_to_handle_at', 'iopl', 'ioperm', 'quotactl', 'quotactl_fd',
  'vhangup', 'nfsservctl', 'kcmp', 'process_madvise',
];

/**
 * Address families refused in socket(2): vsock is not network-namespaced (it reaches the host's
 * and hypervisor's vsock services); the others are rarely needed and have a history of kernel
 * bugs. A qube keeps AF_UNIX, AF_INET, AF_INET6, AF_NETLINK (and AF_PACKET/raw sockets only with
 * CAP_NET_RAW, which it lacks).
 */
export const DENIED_SOCKET_FAMILIES: Readonly<Record<string, number>> = {
  AF_AX25: 3, AF_IPX: 4, AF_APPLETALK: 5, AF_ATMPVC: 8, AF_X25: 9, AF_DECnet: 12, AF_RDS: 21,
  AF_CAN: 29, AF_TIPC: 30, AF_BLUETOOTH: 31, AF_ALG: 38, AF_VSOCK: 40, AF_KCM: 41, AF_XDP: 44,
};

/** CLONE_NEW* flags refused in clone(2)'s flags argument. */
const CLONE_NAMESPACE_FLAGS: readonly number[] = [
  0x00020000, // CLONE_NEWNS
  0x02000000, // CLONE_NEWCGROUP
  0x04000000, // CLONE_NEWUTS
  0x08000000, // CLONE_NEWIPC
  0x10000000, // CLONE_NEWUSER
  0x20000000, // CLONE_NEWPID
  0x40000000, // CLONE_NEWNET
  0x00000080, // CLONE_NEWTIME
];

function nativeArch(): string {
  switch (process.arch) {
    case 'x64':
      return 'SCMP_ARCH_X86_64';
    case 'arm64':
      return 'SCMP_ARCH_AARCH64';
    default:
      throw new Error(`no seccomp profile for architecture ${process.arch}`);
  }
}

export interface SeccompRule {
  readonly names: readonly string[];
  readonly action: string;
  readonly errnoRet?: number;
  readonly args?: readonly { index: number; value: number; valueTwo: number; op: string }[];
}

export interface SeccompProfile {
  readonly defaultAction: string;
  readonly architectures: readonly string[];
  readonly syscalls: readonly SeccompRule[];
}

export function seccompProfile(): SeccompProfile {
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: [nativeArch()],
    syscalls: [
      { names: DENIED_SYSCALLS, action: 'SCMP_ACT_ERRNO', errnoRet: EPERM },
      { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
      ...Object.values(DENIED_SOCKET_FAMILIES).map((family) => ({
        names: ['socket'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EAFNOSUPPORT,
        args: [{ index: 0, value: family, valueTwo: 0, op: 'SCMP_CMP_EQ' }],
      })),
      ...CLONE_NAMESPACE_FLAGS.map((flag) => ({
        names: ['clone'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EPERM,
        args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }],
      })),
    ],
  };
}
