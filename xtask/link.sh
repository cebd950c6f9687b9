#!/bin/sh
# The linker .cargo/config.toml names for host builds. GNU ld needs ~30 s to link one of the
# workspace's debug test binaries (hundreds of MB with their line tables) on this kind of
# 2-core machine and there are ~110 of them; mold links the same in ~2 s. `cargo xtask setup`
# installs mold; until it has (a fresh checkout builds xtask first), link with plain cc.
if command -v mold >/dev/null 2>&1; then
    exec cc -fuse-ld=mold "$@"
fi
exec cc "$@"
