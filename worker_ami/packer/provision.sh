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
#   user `lighthpc`                     system user, no login shell, home /var/lib/lighthpc
set -euo pipefail

readonly BUILD_DIR="${BUILD_DIR:-/tmp/lighthpc-build}"
readonly PREFIX=/opt/lighthpc
readonly APP_DIR="${PREFIX}/app"
readonly VENV="${PREFIX}/venv"
readonly SERVICE_USER=lighthpc
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
  lighthpc-worker.service lighthpc-bootstrap; do
  [[ -e "${BUILD_DIR}/${path}" ]] || die "missing ${BUILD_DIR}/${path}: check the file provisioners"
done

log "installing ${PYTHON}"
# No weak deps: the image carries what the agent needs and little else.
dnf install -y --setopt=install_weak_deps=False "${PYTHON}" "${PYTHON}-pip"

log "creating system user ${SERVICE_USER}"
if ! id -u "${SERVICE_USER}" >/dev/null 2>&1; then
  # The home is the unit's StateDirectory, which systemd creates (and owns to the user) at start.
  useradd --system --user-group --no-create-home --home-dir "${STATE_DIR}" \
    --shell /usr/sbin/nologin --comment "lighthpc worker agent" "${SERVICE_USER}"
fi

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
install -d -m 0750 -o root -g "${SERVICE_USER}" "${CONF_DIR}"
systemctl daemon-reload
# Checks the unit against this systemd (directives, paths of ExecStart, user) before it ships.
systemd-analyze verify "/etc/systemd/system/${UNIT}"
systemctl enable "${UNIT}"

log "smoke check"
smoke="$(mktemp -d)"
chown "${SERVICE_USER}:${SERVICE_USER}" "${smoke}"
as_worker() {
  # The service's user, interpreter and module path, from a directory it may write.
  (cd "${smoke}" && runuser -u "${SERVICE_USER}" -- env -i PATH=/usr/bin:/bin \
    PYTHONPATH="${APP_DIR}" PYTHONDONTWRITEBYTECODE=1 "${VENV}/bin/python" "$@")
}
# Imports the agent with all of its dependencies (boto3, pynamodb, Powertools, pydantic).
as_worker -m worker_ami.agent --help >/dev/null
# One built-in app on a tiny input.
printf 'ACGT\nggcc\n\nAATTG\n' >"${smoke}/input"
chown "${SERVICE_USER}:${SERVICE_USER}" "${smoke}/input"
as_worker -m worker_ami.apps.seq_stats --input input --output part --start 0 --end 4
# The expected part is what the dev venv gives (tests/deploy/test_worker_ami.py checks it).
expected=$'0\t4\t0.5000\t1dff3e84fe7877e0\n'
expected+=$'1\t4\t1.0000\t443e8e1851df324f\n'
expected+=$'3\t5\t0.2000\t469485de9ae72edf'
[[ "$(cat -- "${smoke}/part")" == "${expected}" ]] ||
  die "seq-stats gave: $(cat -- "${smoke}/part")"
# The bootstrap as the user data will run it, into a scratch root, without starting anything.
LIGHTHPC_ROOT="${smoke}/root" "${PREFIX}/bin/lighthpc-bootstrap" --no-start \
  LIGHTHPC_STAGE=smoke AWS_REGION=us-east-1 SOURCE_BUCKET=smoke-src RESULT_BUCKET=smoke-res
[[ "$(stat -c '%a %G' -- "${smoke}/root/etc/lighthpc/worker.env")" == "640 ${SERVICE_USER}" ]] ||
  die "bootstrap wrote worker.env with the wrong mode or group"
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
