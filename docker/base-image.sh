#!/usr/bin/env bash
# Makes sure the Dockerfile's base image, debian:bookworm-slim, is present: already there, pulled
# from the registry, or (where no registry answers, as on a machine without Docker Hub) built here
# from Debian's own mirror with debootstrap and imported under that name, so that the Dockerfile
# users build is the very one tested.
#   docker/base-image.sh            ensure the image (needs root and debootstrap for the last way)
set -euo pipefail
image=debian:bookworm-slim
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$image" > /dev/null 2>&1; then
  exit 0
fi
if timeout 60 docker pull -q "$image" > /dev/null 2>&1; then
  echo "base image: pulled $image"
  exit 0
fi
command -v debootstrap > /dev/null || {
  echo "base image: $image cannot be pulled and debootstrap is missing; install it (apt-get install debootstrap)" >&2
  exit 1
}
echo "base image: $image cannot be pulled; building it with debootstrap from $mirror (a few minutes)"
root=$(mktemp -d /tmp/riskstream-bookworm.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" > "$root.log" 2>&1 || {
  echo "base image: debootstrap failed; see $root.log" >&2
  trap - EXIT
  exit 1
}
# What the official slim image does: the same suites as Debian's image, no documentation or
# locales installed by later packages, no apt caches kept.
cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$image" > /dev/null
rm -f "$root.log"
echo "base image: $image imported ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
