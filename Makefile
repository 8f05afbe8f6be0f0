# SPDX-License-Identifier: GPL-2.0
#
# kvm-shadow-stats: KVM x86's mmu_shadow_pages stat, kept by a Rust module.
#
#   make run         build everything, boot it, watch the stat move
#   make demo-guest  a Linux guest's boot on the shadow MMU, recorded, plotted
#   make test        every test: host checks and in-guest selftests
#   make install     the module, kvm_shadow_top, its man page and systemd service
#
# Variables: KVER=7.3 (Debian linux-source-KVER), FLAVOR=base|debug|bpf,
# KDIR=<your own patched kernel build> instead of the embedded default,
# NPT=0|1 for make demo-guest (0: KVM shadows the guest's page tables, on a
# patched copy of the host's QEMU; 1: the shadow MMU builds its NPT tables),
# DESTDIR and PREFIX=/usr/local for make install.
#
# The module itself is built by kbuild from ./Kbuild:
#   make -C <patched kernel build> M=$PWD modules

KVER ?= 7.3
FLAVOR ?= base
PREFIX ?= /usr/local
export KVER FLAVOR KDIR DESTDIR PREFIX

S := scripts

.PHONY: all setup kernel module selftests run demo-guest test bench stress install env clean distclean help

all: module selftests

help:
	@sed -n '3,/^$$/p' Makefile | sed 's/^# \{0,1\}//'

setup:
	@$(S)/setup

kernel: setup
	@if [ -z "$(KDIR)" ]; then $(S)/build-kernel; fi

module: kernel
	@$(S)/build-module

selftests: kernel
	@$(S)/build-selftests

run: module selftests
	@$(S)/demo

demo-guest: module selftests
	@$(S)/demo-guest

test: setup
	@$(S)/test

bench: module selftests
	@$(S)/bench

stress: module selftests
	@$(S)/stress

install: module
	@$(S)/install

env:
	@$(S)/env

# Keeps build/cache (the downloaded kernel source) and the patched tree.
clean:
	rm -rf build/kbuild-* build/module-* build/selftests-* build/headers-* build/vm-logs \
		build/rust-selftest build/vm-* build/*.log build/bench.txt build/bench-snapshot \
		build/demo-guest

distclean:
	rm -rf build
