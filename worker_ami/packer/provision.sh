#!/usr/bin/env bash
# Bake the worker onto an Amazon Linux 2023 build instance. Run by Packer (worker.pkr.hcl) as
# root, after the file provisioners have put the code, the unit and the bootstrap in BUILD_DIR.
#
# Result:
#   /opt/lighthpc/venv                  Python 3.11 with the pinned runtime deps
#   /opt/lighthpc/app/{chalicelib,worker_ami}   the code, root-owned, byte-compiled
#   /opt/lighthpc/bin/lighthpc-bootstrap        what the launch template's user data runs
#   /etc/systemd/system/lighthpc-worker.service enabled; starts once worker.env exists
#   /etc/lighthpc/                      where the bootstrap writes worker.env (not in the AMI)
#   users lighthpc-app-0..255           the apps' users (uids 60600-60855), no login, no home
#   /etc/nftables/lighthpc-imds-guard.nft   keeps those users off the instance metadata service
set -euo pipefail

readonly BUILD_DIR="${BUILD_DIR:-/tmp/lighthpc-build}"
readonly PREFIX=/opt/lighthpc
readonly APP_DIR="${PREFIX}/app"
readonly VENV="${PREFIX}/venv"
# worker_ami/runner.py's APP_UID_BASE and APP_UID_COUNT (tests/deploy/test_worker_ami.py checks).
readonly APP_UID_BASE=60600
readonly APP_USERS=256
readonly GUARD=/etc/nftables/lighthpc-imds-guard.nft
readonly STATE_DIR=/var/lib/lighthpc
readonly CONF_DIR=/etc/lighthpc
readonly UNIT=lighthpc-worker.service
readonly PYTHON=python3.11

log() {
  printf '==> lighthpc: %s\n' "$*"
}

die() {
  printf '==> lighthpc: ERROR: %s\n' "$*" >&2
  exit 1
}

[[ "${EUID}" -eq 0 ]] || die "run as root (Packer's execute_command uses sudo)"
for path in chalicelib worker_ami requirements.txt worker_ami/requirements.txt \
  worker_ami/packer/imds-guard.nft lighthpc-worker.service lighthpc-bootstrap; do
  [[ -e "${BUILD_DIR}/${path}" ]] || die "missing ${BUILD_DIR}/${path}: check the file provisioners"
done

log "installing ${PYTHON} and nftables"
# No weak deps: the image carries what the agent needs and little else.
dnf install -y --setopt=install_weak_deps=False "${PYTHON}" "${PYTHON}-pip" nftables

log "creating the app users lighthpc-app-0..$((APP_USERS - 1))"
# One per running app, so that "every process of this uid" is one app's and nothing else's. A
# group each, of the same number; no home, no shell, no password. -K: uids this high are system
# users all the same (the default SYS_UID_MAX would make useradd warn 512 times).
for ((i = 0; i < APP_USERS; i++)); do
  id=$((APP_UID_BASE + i))
  name="lighthpc-app-${i}"
  if ! getent group "${name}" >/dev/null; then
    groupadd --system -K SYS_GID_MAX=65000 --gid "${id}" "${name}"
  fi
  if ! id -u "${name}" >/dev/null 2>&1; then
    useradd --system -K SYS_UID_MAX=65000 --uid "${id}" --gid "${id}" --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin --comment "lighthpc app ${i}" "${name}"
  fi
  [[ "$(id -u "${name}"):$(id -g "${name}"):$(id -G "${name}")" == "${id}:${id}:${id}" ]] ||
    die "${name} is not uid and gid ${id} with no other group"
done

log "installing the app users' firewall rule"
install -D -m 0644 -o root -g root -- "${BUILD_DIR}/worker_ami/packer/imds-guard.nft" "${GUARD}"

log "creating ${VENV}"
rm -rf -- "${VENV}"
"${PYTHON}" -m venv "${VENV}"
# Wheels only: nothing is compiled or built by a setup.py on the image, and a dependency without
# a wheel for this platform fails the bake instead of pulling in a compiler.
"${VENV}/bin/python" -m pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
  -r "${BUILD_DIR}/worker_ami/requirements.txt"
"${VENV}/bin/python" -m pip check

log "installing the code in ${APP_DIR}"
rm -rf -- "${APP_DIR}"
install -d -m 0755 -o root -g root "${APP_DIR}"
cp -R -- "${BUILD_DIR}/chalicelib" "${BUILD_DIR}/worker_ami" "${APP_DIR}/"
# Only the Python packages belong in the app tree: not the Packer template, not the build
# machine's byte code.
rm -rf -- "${APP_DIR}/worker_ami/packer"
find "${APP_DIR}" -name __pycache__ -type d -prune -exec rm -rf -- {} +
chown -R root:root "${APP_DIR}"
chmod -R u=rwX,go=rX "${APP_DIR}"
# The unit mounts the tree read-only; compile now so every start does not compile in memory.
"${VENV}/bin/python" -m compileall -q "${APP_DIR}"

log "installing the bootstrap and the unit"
install -D -m 0755 -o root -g root -- \
  "${BUILD_DIR}/lighthpc-bootstrap" "${PREFIX}/bin/lighthpc-bootstrap"
install -D -m 0644 -o root -g root -- \
  "${BUILD_DIR}/lighthpc-worker.service" "/etc/systemd/system/${UNIT}"
install -d -m 0700 -o root -g root "${CONF_DIR}"
systemctl daemon-reload
# Checks the unit against this systemd (directives, paths of ExecStart, user) before it ships.
systemd-analyze verify "/etc/systemd/system/${UNIT}"
systemctl enable "${UNIT}"

log "smoke check"
smoke="$(mktemp -d)"
chmod 0711 "${smoke}"
app_user="lighthpc-app-0"
as_agent() {
  # The service's interpreter and module path, as root (the unit's capabilities aside).
  (cd "${smoke}" && env -i PATH=/usr/bin:/bin PYTHONPATH="${APP_DIR}" PYTHONDONTWRITEBYTECODE=1 \
    "${VENV}/bin/python" "$@")
}
as_app() {
  # An app user, as the agent runs it: in a directory of its own, reading a read-only input.
  (cd "${smoke}/app" && runuser -u "${app_user}" -- env -i PATH=/usr/bin:/bin \
    PYTHONPATH="${APP_DIR}" PYTHONDONTWRITEBYTECODE=1 "$@")
}
# Imports the agent with all of its dependencies (boto3, pynamodb, Powertools, pydantic).
as_agent -m worker_ami.agent --help >/dev/null
# One built-in app on a tiny input, run by an app user with the interpreter the agent gives it.
install -d -m 0700 -o "${app_user}" -g "${app_user}" "${smoke}/app"
printf 'ACGT\nggcc\n\nAATTG\n' >"${smoke}/app/input"
chmod 0444 "${smoke}/app/input"
as_app "${VENV}/bin/python" -m worker_ami.apps.seq_stats --input input --output part --start 0 --end 4
if as_app "${VENV}/bin/python" -c 'open("input", "r+b")' 2>/dev/null; then
  die "an app user could write its read-only input"
fi
# The expected part is what the dev venv gives (tests/deploy/test_worker_ami.py checks it).
expected=$'0\t4\t0.5000\t1dff3e84fe7877e0\n'
expected+=$'1\t4\t1.0000\t443e8e1851df324f\n'
expected+=$'3\t5\t0.2000\t469485de9ae72edf'
[[ "$(cat -- "${smoke}/app/part")" == "${expected}" ]] ||
  die "seq-stats gave: $(cat -- "${smoke}/app/part")"
# The firewall rule, as the unit loads it: the agent reaches IMDS, an app user does not.
imds_token() {
  curl -s -f -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
    http://169.254.169.254/latest/api/token
}
nft -f "${GUARD}"
imds_token >/dev/null || die "root cannot reach the instance metadata service"
if runuser -u "${app_user}" -- bash -c "$(declare -f imds_token); imds_token" >/dev/null 2>&1; then
  die "an app user reached the instance metadata service despite ${GUARD}"
fi
nft delete table inet lighthpc_imds_guard
# The bootstrap as the user data will run it, into a scratch root, without starting anything.
LIGHTHPC_ROOT="${smoke}/root" "${PREFIX}/bin/lighthpc-bootstrap" --no-start \
  LIGHTHPC_STAGE=smoke AWS_REGION=us-east-1 SOURCE_BUCKET=smoke-src RESULT_BUCKET=smoke-res
[[ "$(stat -c '%a %U' -- "${smoke}/root/etc/lighthpc/worker.env")" == "600 root" ]] ||
  die "bootstrap wrote worker.env with the wrong mode or owner"
rm -rf -- "${smoke}"

log "cleaning up"
rm -rf -- "${BUILD_DIR}"
# Settings come from each instance's user data; none may ship in the image.
rm -f -- "${CONF_DIR}/worker.env"
rm -rf -- "${STATE_DIR}"
dnf clean all
rm -rf /var/cache/dnf
# Every instance gets its own host keys (sshd-keygen at first boot) and only the key pair it is
# launched with (cloud-init); the build's temporary Packer key must not stay authorized.
rm -f /etc/ssh/ssh_host_*
rm -f /home/ec2-user/.ssh/authorized_keys /root/.ssh/authorized_keys
# So cloud-init treats the next boot as a first boot: runs the user data, writes the keys.
cloud-init clean --logs
rm -f /root/.bash_history /home/ec2-user/.bash_history
log "done"
