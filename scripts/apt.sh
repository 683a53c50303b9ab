# Sourced by the scripts that install their own Debian packages (cross-test.sh, mcu-test.sh),
# after they define `die`.
#
# apt_prepare TAG HINT: checks that packages can be installed here and sets $sudo to the prefix
#   that runs a command as root ("" when already root). HINT says what to install by hand on a
#   system without apt-get.
# apt_update TAG: refreshes the package index; a stale mirror makes `apt-get update` exit 100
#   while the other indexes are fine, so that only prints a line and the caller goes on.
apt_prepare() {
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "installing packages needs root: run as root or install sudo"
    sudo="sudo"
  fi
  command -v apt-get >/dev/null || die "this script installs its toolchain with apt (Debian bookworm or later); elsewhere $2"
}

apt_update() {
  $sudo apt-get update -q || echo "$1: apt-get update reported errors; going on with the indexes that loaded"
}
