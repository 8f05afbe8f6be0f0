# SPDX-License-Identifier: GPL-2.0
#
# Sourced by the scripts: where the kernel, the module and the selftests of
# the current KVER/FLAVOR (or of a user's KDIR) live.

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$TOP/build}
KVER=${KVER:-7.3}
FLAVOR=${FLAVOR:-base}

die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

# busybox_root DIR: DIR/bin with a static busybox and a link for each of
# its applets, the userspace of an initramfs, which has no libc to load.
busybox_root() {
	local root=$1 busybox applet
	busybox=$(command -v busybox || true)
	[ -n "$busybox" ] && file -L "$busybox" 2>/dev/null | grep -q static ||
		busybox=/bin/busybox
	[ -x "$busybox" ] || die "busybox-static missing: run scripts/setup"
	mkdir -p "$root/bin"
	cp "$busybox" "$root/bin/busybox"
	for applet in $("$root/bin/busybox" --list); do
		[ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
	done
}

# nested_linux_initramfs OUT: the initramfs of the Linux guest that
# scripts/guest/nested-linux boots inside the test guest: busybox and
# scripts/nested-linux/init.
nested_linux_initramfs() {
	local root
	root=$(mktemp -d)
	busybox_root "$root"
	mkdir -p "$root"/{proc,dev,tmp}
	cp "$TOP/scripts/nested-linux/init" "$root/init"
	pack_initramfs "$root" "$1"
	rm -rf "$root"
}

# pack_initramfs DIR OUT: DIR as a gzipped newc cpio archive, which the
# kernel unpacks as its initramfs.
pack_initramfs() {
	(cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) >"$2"
}

# stock is Debian's kernel without the patches, for benchmarks; bpf adds
# what bpftrace needs (configs/bpf.config), for the BPF alternative.
case "$FLAVOR" in
base | debug | bpf | stock) ;;
*) die "unknown FLAVOR '$FLAVOR' (known: base, debug, bpf, stock)" ;;
esac

if [ -n "${KDIR:-}" ]; then
	# A user's own patched kernel: an O= build directory, or a source
	# tree built in place.
	[ -f "$KDIR/.config" ] && [ -f "$KDIR/Module.symvers" ] ||
		die "KDIR=$KDIR is not a built kernel (no .config or Module.symvers)"
	KBUILD=$(cd "$KDIR" && pwd)
	if [ -e "$KBUILD/source" ]; then
		KSRC=$(readlink -f "$KBUILD/source")
	else
		KSRC=$KBUILD
	fi
	KRELEASE="$(cat "$KBUILD/include/config/kernel.release" 2>/dev/null || echo unknown) (KDIR)"
	variant=kdir
else
	KSRC=$BUILD/linux-$KVER
	[ "$FLAVOR" != stock ] || KSRC=$BUILD/linux-$KVER-stock
	KBUILD=$BUILD/kbuild-$KVER-$FLAVOR
	KRELEASE="linux-source-$KVER $(cat "$BUILD/cache/linux-source-$KVER/.debian-version" 2>/dev/null || echo '(not fetched yet)')"
	variant=$KVER-$FLAVOR
fi
BZIMAGE=$KBUILD/arch/x86/boot/bzImage
MODDIR=$BUILD/module-$variant
MODULE=$MODDIR/rust/kvm_shadow_stats.ko
# Static userspace binaries, the same for every flavor of a kernel.
SELFTESTS=$BUILD/selftests-${variant%-*}
HEADERS=$BUILD/headers-${variant%-*}
# The Rust selftest and the Rust sample, static musl binaries.
RUST_BINARIES=$BUILD/rust-selftest/x86_64-unknown-linux-musl/release
RUST_SELFTEST=$RUST_BINARIES/shadow_mmu_stats
export LIBCLANG_PATH=${LIBCLANG_PATH:-/usr/lib/llvm-19/lib}
if [ "$FLAVOR" = debug ] && [ -z "${KDIR:-}" ]; then
	KMAKE_LLVM=LLVM=-19
else
	KMAKE_LLVM=
fi

# What in a kernel log is a failure: oopses, BUGs, WARNs, KASAN, lockdep and
# kmemleak findings, RCU stalls ("rcu: INFO: rcu_preempt detected stalls on
# CPUs/tasks:", "... self-detected stall on CPU", expedited ones and those of
# RCU tasks), hung tasks ("INFO: task NAME:PID blocked for more than N
# seconds.", or "blocked in I/O wait"), and KVM's report that one of this
# project's accountants got the stat wrong or was left registered by its
# module (the broken ones of accountant_repair_test provoke such reports on
# purpose).
KERNEL_REPORT_RE='(------------\[ cut here \]|WARNING: |BUG: |Oops|Kernel panic|KASAN|UBSAN|'\
'circular locking|recursive locking|inconsistent lock state|suspicious RCU usage|'\
'unreferenced object|sleeping function called from invalid context|list_(add|del) corruption|'\
'INFO: rcu_[a-z_]+ (self-)?detected (expedited )?stalls?|'\
'INFO: task .+ blocked( in I/O wait)? for more than [0-9]+ seconds|'\
'(kvm_shadow_stats|kvm_mmu_accountant_sample)(: shadow page accountant still registered| left mmu_shadow_pages))'
export KERNEL_REPORT_RE
