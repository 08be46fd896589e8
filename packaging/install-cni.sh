#!/bin/sh
# Init container of the podwire DaemonSet: install the frozen CNI plugin into the host's CNI bin dir.
#
# The plugin is a PyInstaller onedir bundle (the executable `podwire` next to `_internal/`), so it
# goes in as a folder named by its content hash, podwire-<id>/, and the runtime's entry point
# `podwire` becomes a symlink to the executable inside it. The folder is copied under a temporary
# name and renamed, then the symlink is swapped with one rename: a runtime calling the plugin
# meanwhile sees the old plugin or the new one, never a half-copied folder.
#   CNI_BIN_DIR     where the host's /opt/cni/bin is mounted (default /host/opt/cni/bin)
#   PODWIRE_CNI_SRC the bundle in the image (default /opt/podwire/cni)
set -eu
SRC=${PODWIRE_CNI_SRC:-/opt/podwire/cni}
DEST=${CNI_BIN_DIR:-/host/opt/cni/bin}
id=$(cat "$SRC/.bundle-id")
dir="podwire-$id"

mkdir -p "$DEST"
if [ ! -x "$DEST/$dir/podwire" ] || [ "$(cat "$DEST/$dir/.bundle-id" 2>/dev/null)" != "$id" ]; then
    tmp="$DEST/.$dir.tmp.$$"
    rm -rf "$tmp"
    cp -a "$SRC" "$tmp"
    rm -rf "${DEST:?}/$dir"
    mv "$tmp" "$DEST/$dir"
fi
ln -s "$dir/podwire" "$DEST/.podwire.tmp.$$"
mv -f "$DEST/.podwire.tmp.$$" "$DEST/podwire"

# Bundles of earlier versions: nothing points at them any more. Only folders we made (they carry
# .bundle-id) are removed. A plugin call that started from an old folder a moment ago may fail and
# be retried by the kubelet, as with any plugin upgrade.
for old in "$DEST"/podwire-*; do
    [ "$old" = "$DEST/$dir" ] && continue
    if [ -d "$old" ] && [ -f "$old/.bundle-id" ]; then
        rm -rf "$old"
    fi
done

# Prove the installed plugin starts (its glibc is the one it will run with on this host only if the
# host's is as new as the build host's; here it runs with the image's).
version=$(CNI_COMMAND=VERSION "$DEST/podwire" </dev/null)
echo "podwire CNI plugin $id installed in $DEST: $version"
