"""The Pod Security Standards' `restricted` profile (Kubernetes 1.34), evaluated offline.

No API server can be had in the tests, so the admission controller's checks are written out
here from https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the baseline
controls, which restricted includes, then restricted's own). Each violation names its field.
"""

from __future__ import annotations

from collections.abc import Iterator

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _containers(pod: dict) -> Iterator[tuple[str, dict]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(kind, []):
            yield f"{kind}[{container.get('name', '?')}]", container


def _baseline_pod(pod: dict) -> Iterator[str]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            yield f"spec.{field} must be false"
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            yield f"volumes[{volume['name']}]: hostPath is not allowed"
    for sysctl in pod.get("securityContext", {}).get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            yield f"securityContext.sysctls: {sysctl['name']} is not a safe sysctl"


def _baseline_contexts(pod: dict) -> Iterator[str]:
    for where, ctx in [("spec.securityContext", pod.get("securityContext", {}))] + [
            (f"{name}.securityContext", c.get("securityContext", {})) for name, c in _containers(pod)]:
        if ctx.get("windowsOptions", {}).get("hostProcess"):
            yield f"{where}.windowsOptions.hostProcess must be false"
        if ctx.get("seccompProfile", {}).get("type") == "Unconfined":
            yield f"{where}.seccompProfile.type must not be Unconfined"
        selinux = ctx.get("seLinuxOptions", {})
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            yield f"{where}.seLinuxOptions: only the container types, no user or role"
        apparmor = ctx.get("appArmorProfile", {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            yield f"{where}.appArmorProfile.type must be RuntimeDefault or Localhost"


def _baseline_containers(pod: dict) -> Iterator[str]:
    for name, container in _containers(pod):
        ctx = container.get("securityContext", {})
        if ctx.get("privileged"):
            yield f"{name}: privileged must be false"
        if ctx.get("procMount", "Default") != "Default":
            yield f"{name}: procMount must be Default"
        for port in container.get("ports", []):
            if port.get("hostPort"):
                yield f"{name}: hostPort {port['hostPort']} is not allowed"
        for cap in set(ctx.get("capabilities", {}).get("add", [])) - BASELINE_CAPABILITIES:
            yield f"{name}: capability {cap} may not be added"


def _restricted(pod: dict) -> Iterator[str]:
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            yield f"volumes[{volume['name']}]: {', '.join(sorted(kinds))} is not an allowed volume type"
    pod_ctx = pod.get("securityContext", {})
    if pod_ctx.get("runAsUser") == 0:
        yield "spec.securityContext.runAsUser must not be 0"
    for name, container in _containers(pod):
        ctx = container.get("securityContext", {})
        if ctx.get("allowPrivilegeEscalation") is not False:
            yield f"{name}: allowPrivilegeEscalation must be false"
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        if non_root is not True:
            yield f"{name}: runAsNonRoot must be true (in the pod's or the container's securityContext)"
        if ctx.get("runAsUser") == 0:
            yield f"{name}: runAsUser must not be 0"
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield f"{name}: seccompProfile.type must be RuntimeDefault or Localhost"
        capabilities = ctx.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            yield f"{name}: capabilities.drop must include ALL"
        for cap in set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            yield f"{name}: only NET_BIND_SERVICE may be added, not {cap}"


def restricted_violations(pod: dict) -> list[str]:
    """Every way a pod spec breaks the `restricted` profile (empty: it would be admitted)."""
    return [*_baseline_pod(pod), *_baseline_contexts(pod), *_baseline_containers(pod), *_restricted(pod)]
