#!/usr/bin/env bash
# Install aupguard on a gateway host (Debian 12 / Ubuntu 24.04), run as root from a checkout:
#   sudo scripts/install.sh            # install or upgrade, then `systemctl enable --now aupguard`
# Creates: /opt/aupguard (code + venv), user/group `aupguard`, group `aupguard-reviewers`
# (may read records and logs), /etc/aupguard (config), /var/lib/aupguard, /var/log/aupguard.
set -euo pipefail

PREFIX=/opt/aupguard
VENV=/opt/aupguard/venv  # the units run $VENV/bin/aupguard
SRC=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$("$SRC/scripts/find-python")}

[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 2; }

getent group aupguard-reviewers >/dev/null || groupadd --system aupguard-reviewers
getent group aupguard >/dev/null || groupadd --system aupguard
id -u aupguard >/dev/null 2>&1 || useradd --system --gid aupguard --home-dir /var/lib/aupguard \
  --no-create-home --shell /usr/sbin/nologin --comment "aupguard gateway" aupguard

install -d -m 0755 -o root -g root "$PREFIX"
rsync -a --delete --exclude .venv --exclude .git --exclude venv "$SRC/" "$PREFIX/src/"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "$PREFIX/src"
install -d -m 0755 "$PREFIX/docs" && install -m 0644 "$SRC/docs/operations.md" "$PREFIX/docs/"

# Config is root-owned and group-readable by the service; never overwritten on upgrade.
install -d -m 0750 -o root -g aupguard /etc/aupguard
if [ ! -e /etc/aupguard/policy.yaml ]; then
  cp -r "$SRC/config/." /etc/aupguard/
  cp -r "$SRC/blocklists" /etc/aupguard/blocklists
  sed -i 's#\.\./blocklists/#blocklists/#' /etc/aupguard/policy.yaml
  chown -R root:aupguard /etc/aupguard && chmod -R g+rX,o-rwx /etc/aupguard
fi

for d in /var/lib/aupguard /var/log/aupguard; do
  install -d -m 0750 -o aupguard -g aupguard "$d"
done
# Reviewers read records and logs (and new files there) through a default ACL.
if command -v setfacl >/dev/null; then
  setfacl -m g:aupguard-reviewers:rX -d -m g:aupguard-reviewers:rX /var/log/aupguard
else
  echo "install.sh: setfacl missing (apt-get install acl): reviewers cannot read records" >&2
fi

install -m 0644 "$SRC"/systemd/aupguard.service "$SRC"/systemd/aupguard-lists-update.service \
  "$SRC"/systemd/aupguard-lists-update.timer /etc/systemd/system/
systemctl daemon-reload
"$VENV/bin/aupguard" check-config /etc/aupguard/policy.yaml
echo "installed. Start with: systemctl enable --now aupguard aupguard-lists-update.timer"
