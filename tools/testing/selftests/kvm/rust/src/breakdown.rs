// SPDX-License-Identifier: GPL-2.0

//! What `kvm_shadow_stats.ko`'s breakdown of a VM's shadow pages by role must say
//! (Documentation/shadow-page-breakdown.rst), checked on files parsed by `kvm_stats`.
//!
//! Each check returns the reason it failed, with the expected and the actual values, and
//! leaves reading the files and reporting to the test; so the checks are unit-tested here on
//! sample text, among them against the faults they exist to catch.

use std::collections::BTreeMap;
use std::fmt::Write;

use kvm_stats::breakdown::{Pages, Role, Totals, VmTotals};

/// The `pages` column by role, without the roles that hold no page.
pub type Held = BTreeMap<Role, u64>;

/// Bytes of a shadow page table, which `page_table_bytes` counts once per page.
const PAGE_TABLE_BYTES: u64 = 4096;

/// The role of a shadow page of `level` outside SMM, direct or not, of an L2 guest
/// (`guest_mode`) or of an L1 one.
pub fn shadow_role(level: u8, direct: bool, guest_mode: bool) -> Role {
    Role {
        level,
        direct,
        guest_mode,
        smm: false,
    }
}

/// The shadow pages a guest needs for one walk of each of the page tables KVM shadows for it,
/// given their levels: one indirect page outside SMM per table, at its level, and one direct
/// level-1 page per 2 MiB page that 4 KiB host pages back. On shadow paging the tables are the
/// guest's and the 2 MiB pages its own, and the pages an L1 guest's; under nested NPT
/// (`guest_mode`) the tables are L1's NPT tables and the 2 MiB pages NPT pages, and the pages
/// are L2's.
pub fn needed_by_role(table_levels: &[u8], direct_level1: u64, guest_mode: bool) -> Held {
    let mut held = Held::new();
    for &level in table_levels {
        *held
            .entry(shadow_role(level, false, guest_mode))
            .or_default() += 1;
    }
    if direct_level1 != 0 {
        held.insert(shadow_role(1, true, guest_mode), direct_level1);
    }
    held
}

/// What a guest that walked page tables of `table_levels`, root first, in that order, holds
/// after KVM's page limit zapped `zapped` of the pages: KVM zaps the oldest first, but not a
/// root in use, so the root stays.
///
/// On shadow paging, the newest pages stay too. Under nested NPT (`guest_mode`), KVM zaps a
/// nested page together with every page below it that no other page points to
/// (mmu_page_zap_pte()): the oldest page but the root is the root's only child in the test's
/// NPT tables, which all hang below it, so any zap leaves the root alone.
pub fn after_oldest_zapped(table_levels: &[u8], zapped: u64, guest_mode: bool) -> Held {
    let Some((&root, rest)) = table_levels.split_first() else {
        return Held::new();
    };
    let zapped = usize::try_from(zapped).unwrap_or(usize::MAX);
    let rest = match guest_mode {
        true if zapped > 0 => &[],
        _ => rest.get(zapped..).unwrap_or(&[]),
    };
    let mut held = needed_by_role(rest, 0, guest_mode);
    *held
        .entry(shadow_role(root, false, guest_mode))
        .or_default() += 1;
    held
}

/// `{level 4 indirect L1 non-SMM: 1, level 1 direct L1 non-SMM: 12}`.
pub fn show<V: std::fmt::Display>(held: &BTreeMap<Role, V>) -> String {
    let buckets: Vec<String> = held
        .iter()
        .map(|(role, pages)| format!("{role}: {pages}"))
        .collect();
    format!("{{{}}}", buckets.join(", "))
}

/// Every line of a `pages` file, for a message: `{role: pages/allocated/zapped/bytes, ...}`.
pub fn show_pages(pages: &Pages) -> String {
    let buckets: Vec<String> = pages
        .buckets()
        .iter()
        .map(|b| {
            format!(
                "{}: {}/{}/{}/{}",
                b.role, b.pages, b.allocated, b.zapped, b.bytes
            )
        })
        .collect();
    format!("{{{}}} (pages/allocated/zapped/bytes)", buckets.join(", "))
}

/// Fails unless `actual` holds exactly the pages of `expected`, role by role.
pub fn compare_held(what: &str, expected: &Held, actual: &Held) -> Result<(), String> {
    if expected == actual {
        return Ok(());
    }
    let mut differences = String::new();
    let roles: std::collections::BTreeSet<&Role> = expected.keys().chain(actual.keys()).collect();
    for role in roles {
        let (want, got) = (
            expected.get(role).copied().unwrap_or(0),
            actual.get(role).copied().unwrap_or(0),
        );
        if want != got {
            let _ = write!(differences, "; {role}: {got}, expected {want}");
        }
    }
    Err(format!(
        "{what}: pages by role are {}, expected {}{differences}",
        show(actual),
        show(expected)
    ))
}

/// Pages the module found in the VM when it attached it, by role: `pages + zapped -
/// allocated` of each bucket, which the VM's events leave unchanged. Roles with none are left
/// out; a negative number means a bucket lost more pages than it had.
pub fn found_by_role(pages: &Pages) -> BTreeMap<Role, i128> {
    pages
        .buckets()
        .iter()
        .map(|b| {
            let found = i128::from(b.pages) + i128::from(b.zapped) - i128::from(b.allocated);
            (b.role, found)
        })
        .filter(|&(_, found)| found != 0)
        .collect()
}

/// The checks that hold for a VM's files, or those of all VMs, read while no VM runs: the
/// buckets add up to the stat `count`, each bucket's bytes follow its role, and `totals` sums
/// `pages`.
pub fn check_files(pages: &Pages, totals: &Totals, count: u64, stat: &str) -> Result<(), String> {
    if pages.pages() != count {
        return Err(format!(
            "the buckets hold {} pages, {stat} is {count}: {}",
            pages.pages(),
            show_pages(pages)
        ));
    }
    for bucket in pages.buckets() {
        let per_page = bucket.role.bytes_per_page();
        let expected = bucket.pages.saturating_mul(per_page);
        if bucket.bytes != expected {
            return Err(format!(
                "{}: {} bytes, expected {expected} for {} pages of {per_page}",
                bucket.role, bucket.bytes, bucket.pages
            ));
        }
    }
    for (key, value, sum) in [
        ("pages", totals.pages, pages.pages()),
        ("allocated", totals.allocated, pages.allocated()),
        ("zapped", totals.zapped, pages.zapped()),
        ("bytes", totals.bytes, pages.bytes()),
        (
            "page_table_bytes",
            totals.page_table_bytes,
            pages.pages().saturating_mul(PAGE_TABLE_BYTES),
        ),
    ] {
        if value != sum {
            return Err(format!(
                "totals says {key} {value}, the pages file gives {sum}: {}",
                show_pages(pages)
            ));
        }
    }
    Ok(())
}

/// [`check_files`] for a VM's files, whose peak, in `totals` as in `peak`, is also at least the
/// pages held.
pub fn check_vm_files(
    pages: &Pages,
    totals: &VmTotals,
    peak: u64,
    count: u64,
    stat: &str,
) -> Result<(), String> {
    check_files(pages, &totals.sums, count, stat)?;
    if totals.peak != peak {
        return Err(format!(
            "totals says peak {}, the peak file {peak}",
            totals.peak
        ));
    }
    if peak < count {
        return Err(format!("peak is {peak}, below the {count} pages held"));
    }
    Ok(())
}

/// Fails unless `all`, the file of all VMs, adds up `vms`, bucket by bucket and column by
/// column.
pub fn check_sum(all: &Pages, vms: &[Pages]) -> Result<(), String> {
    let sum = Pages::sum_of(vms);
    if all.buckets() == sum.buckets() {
        return Ok(());
    }
    Err(format!(
        "the file of all VMs says {}, its {} VMs add up to {}",
        show_pages(all),
        vms.len(),
        show_pages(&sum)
    ))
}

/// Checks a step that only zaps, from `before` to `after`: no bucket allocated a page, each
/// lost exactly as many pages as its `zapped` column grew, and `lost` pages went in all.
pub fn check_zap(before: &Pages, after: &Pages, lost: u64) -> Result<(), String> {
    let roles: std::collections::BTreeSet<Role> = before
        .buckets()
        .iter()
        .chain(after.buckets())
        .map(|b| b.role)
        .collect();
    let mut zapped = 0u64;
    for role in roles {
        let column = |pages: &Pages, f: fn(&kvm_stats::breakdown::Bucket) -> u64| {
            pages.bucket(role).map_or(0, f)
        };
        let (allocated_before, allocated_after) = (
            column(before, |b| b.allocated),
            column(after, |b| b.allocated),
        );
        if allocated_after != allocated_before {
            return Err(format!(
                "{role}: allocated went from {allocated_before} to {allocated_after} in a step \
                 that only zaps"
            ));
        }
        let (pages_before, pages_after) = (column(before, |b| b.pages), column(after, |b| b.pages));
        let (zapped_before, zapped_after) =
            (column(before, |b| b.zapped), column(after, |b| b.zapped));
        let lost_here = i128::from(pages_before) - i128::from(pages_after);
        let zapped_here = i128::from(zapped_after) - i128::from(zapped_before);
        if lost_here != zapped_here {
            return Err(format!(
                "{role}: pages went from {pages_before} to {pages_after} while zapped went from \
                 {zapped_before} to {zapped_after}"
            ));
        }
        zapped = zapped.saturating_add(u64::try_from(zapped_here).unwrap_or(0));
    }
    if zapped != lost {
        return Err(format!(
            "the zapped columns grew by {zapped}, the VM lost {lost} pages"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "level direct guest_mode smm pages allocated zapped bytes\n";

    fn pages(lines: &str) -> Pages {
        Pages::parse(&format!("{HEADER}{lines}")).expect("sample parses")
    }

    /// The levels of the guest page tables of the shadow paging scenario, in the order the
    /// guest walks them: 48 touches of small pages.
    const FIRST_RUN: [u8; 53] = {
        let mut levels = [1; 53];
        (levels[0], levels[1], levels[2], levels[4]) = (4, 3, 2, 2);
        levels
    };

    /// The files of the shadow paging scenario's VM: 48 touches of small pages.
    fn after_a_run() -> (Pages, VmTotals) {
        let pages = pages(
            "1 0 0 0 49 49 0 401408\n2 0 0 0 2 2 0 16384\n3 0 0 0 1 1 0 8192\n\
             4 0 0 0 1 1 0 4096\n",
        );
        let totals = VmTotals::parse(
            "pages 53\npeak 53\nallocated 53\nzapped 0\nbytes 430080\npage_table_bytes 217088\n",
        )
        .expect("sample parses");
        (pages, totals)
    }

    #[test]
    fn needed_pages_follow_the_guest_tables() {
        let needed = needed_by_role(&FIRST_RUN, 0, false);
        assert_eq!(
            show(&needed),
            "{level 1 indirect L1 non-SMM: 49, level 2 indirect L1 non-SMM: 2, \
             level 3 indirect L1 non-SMM: 1, level 4 indirect L1 non-SMM: 1}"
        );
        let (pages, _) = after_a_run();
        assert_eq!(compare_held("VM", &needed, &pages.held()), Ok(()));

        let with_large = needed_by_role(&[4, 3, 2, 1, 2], 12, false);
        assert_eq!(with_large.get(&Role::direct(1)), Some(&12));
        assert_eq!(with_large.values().sum::<u64>(), 17);
    }

    #[test]
    fn a_page_in_the_wrong_bucket_is_named() {
        let (pages, _) = after_a_run();
        // One level-1 page taken for an L2 guest's.
        let needed = needed_by_role(&FIRST_RUN, 0, false);
        let mut moved = pages.held();
        *moved.entry(Role::indirect(1)).or_default() -= 1;
        let l2 = Role {
            guest_mode: true,
            ..Role::indirect(1)
        };
        moved.insert(l2, 1);
        let error = compare_held("VM 1-2", &needed, &moved).expect_err("a moved page is seen");
        assert!(
            error.ends_with(
                "; level 1 indirect L1 non-SMM: 48, expected 49; \
                 level 1 indirect L2 non-SMM: 1, expected 0"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_limit_zaps_the_oldest_pages_but_the_root() {
        // The limits scenario: 160 touches, then KVM_SET_NR_MMU_PAGES 64: 101 pages go, the
        // low memory's PDPT, PD and PT, the touches' PD and 97 of their PTs.
        let mut levels = vec![4, 3, 2, 1, 2];
        levels.extend([1; 160]);
        assert_eq!(
            after_oldest_zapped(&levels, 101, false),
            Held::from([(Role::indirect(4), 1), (Role::indirect(1), 63)])
        );
        assert_eq!(
            after_oldest_zapped(&levels, 0, false),
            needed_by_role(&levels, 0, false)
        );
        assert_eq!(
            after_oldest_zapped(&levels, 1000, false),
            Held::from([(Role::indirect(4), 1)])
        );
        assert!(after_oldest_zapped(&[], 1, false).is_empty());
    }

    #[test]
    fn nested_pages_are_l2_pages() {
        // The direct pages scenario as L2: L1's NPT PML4, PDPT, PD and the page table of the
        // low memory, and a 2 MiB NPT page for each of 12 touches.
        let needed = needed_by_role(&[4, 3, 2, 1], 12, true);
        assert_eq!(
            show(&needed),
            "{level 1 indirect L2 non-SMM: 1, level 2 indirect L2 non-SMM: 1, \
             level 3 indirect L2 non-SMM: 1, level 4 indirect L2 non-SMM: 1, \
             level 1 direct L2 non-SMM: 12}"
        );
    }

    #[test]
    fn a_nested_limit_zaps_all_but_the_root() {
        // The limits scenario as L2: L1's NPT PML4, PDPT, PD and page table of the low memory,
        // the PD of the touches and a page table per touch; any zap takes the PDPT, and with
        // it everything below it.
        let mut levels = vec![4, 3, 2, 1, 2];
        levels.extend([1; 160]);
        let root = Held::from([(shadow_role(4, false, true), 1)]);
        assert_eq!(after_oldest_zapped(&levels, 1, true), root);
        assert_eq!(after_oldest_zapped(&levels, 101, true), root);
        assert_eq!(
            after_oldest_zapped(&levels, 0, true),
            needed_by_role(&levels, 0, true)
        );
        // A level-5 root over the NPT's PML4 stays alone just the same.
        assert_eq!(
            after_oldest_zapped(&[5, 4, 3, 2, 1], 1, true),
            Held::from([(shadow_role(5, false, true), 1)])
        );
    }

    #[test]
    fn consistent_files_pass() {
        let (pages, totals) = after_a_run();
        assert_eq!(check_vm_files(&pages, &totals, 53, 53, "stat"), Ok(()));
        // The same VM alone, as the files of all VMs give it: no peak to check.
        assert_eq!(check_files(&pages, &totals.sums, 53, "stat"), Ok(()));
        assert!(found_by_role(&pages).is_empty());
    }

    #[test]
    fn a_bucket_counted_twice_is_caught() {
        // Each level-1 allocation counted in a second bucket as well.
        let (_, totals) = after_a_run();
        let doubled = pages(
            "1 0 0 0 49 49 0 401408\n2 0 0 0 2 2 0 16384\n3 0 0 0 1 1 0 8192\n\
             4 0 0 0 1 1 0 4096\n1 1 0 0 49 49 0 200704\n",
        );
        let error = check_vm_files(&doubled, &totals, 53, 53, "mmu_shadow_pages")
            .expect_err("102 pages are not 53");
        assert!(
            error.starts_with("the buckets hold 102 pages, mmu_shadow_pages is 53"),
            "{error}"
        );
    }

    #[test]
    fn inconsistent_totals_bytes_and_peaks_are_caught() {
        let (pages, totals) = after_a_run();
        let wrong_bytes = Pages::parse(
            &format!("{HEADER}1 0 0 0 49 49 0 401408\n2 0 0 0 2 2 0 8192\n3 0 0 0 1 1 0 8192\n4 0 0 0 1 1 0 4096\n"),
        )
        .expect("parses");
        assert_eq!(
            check_vm_files(&wrong_bytes, &totals, 53, 53, "stat"),
            Err(
                "level 2 indirect L1 non-SMM: 8192 bytes, expected 16384 for 2 pages of 8192"
                    .into()
            )
        );
        let wrong_total = Totals {
            zapped: 1,
            ..totals.sums.clone()
        };
        let error = check_files(&pages, &wrong_total, 53, "stat").expect_err("zapped 1 != 0");
        assert!(
            error.starts_with("totals says zapped 1, the pages file gives 0"),
            "{error}"
        );
        assert_eq!(
            check_vm_files(&pages, &totals, 54, 53, "stat"),
            Err("totals says peak 53, the peak file 54".into())
        );
        let low_peak = VmTotals { peak: 52, ..totals };
        assert_eq!(
            check_vm_files(&pages, &low_peak, 52, 53, "stat"),
            Err("peak is 52, below the 53 pages held".into())
        );
    }

    #[test]
    fn pages_found_at_attach_are_what_events_do_not_explain() {
        // Adopted 160 level-1 pages, then allocated 3 and zapped 5.
        let adopted = pages("1 0 0 0 158 3 5 1294336\n");
        assert_eq!(
            found_by_role(&adopted),
            BTreeMap::from([(Role::indirect(1), 160)])
        );
    }

    #[test]
    fn the_file_of_all_vms_must_add_up() {
        let (first, _) = after_a_run();
        let second = pages("1 0 0 0 9 9 0 73728\n4 0 0 0 1 1 0 4096\n");
        let all = Pages::sum_of([&first, &second]);
        assert_eq!(check_sum(&all, &[first.clone(), second.clone()]), Ok(()));
        // A VM added twice.
        let error = check_sum(&all, &[first.clone(), second.clone(), second])
            .expect_err("a VM twice is seen");
        assert!(error.contains("its 3 VMs add up to"), "{error}");
        // A VM left out.
        assert!(check_sum(&all, &[first]).is_err());
    }

    #[test]
    fn a_zap_must_take_what_it_counts() {
        let before = pages("1 0 0 0 161 161 0 1318912\n2 0 0 0 2 2 0 16384\n4 0 0 0 1 1 0 4096\n");
        let after = pages("1 0 0 0 63 161 98 516096\n2 0 0 0 0 2 2 0\n4 0 0 0 1 1 0 4096\n");
        assert_eq!(check_zap(&before, &after, 100), Ok(()));
        assert_eq!(
            check_zap(&before, &after, 101),
            Err("the zapped columns grew by 100, the VM lost 101 pages".into())
        );
        // A zap counted in the wrong bucket.
        let misplaced = pages("1 0 0 0 63 161 97 516096\n2 0 0 0 0 2 3 0\n4 0 0 0 1 1 0 4096\n");
        assert_eq!(
            check_zap(&before, &misplaced, 100),
            Err(
                "level 1 indirect L1 non-SMM: pages went from 161 to 63 while zapped went from \
                 0 to 97"
                    .into()
            )
        );
        let allocating = pages("1 0 0 0 63 162 99 516096\n2 0 0 0 0 2 2 0\n4 0 0 0 1 1 0 4096\n");
        assert!(
            check_zap(&before, &allocating, 100)
                .expect_err("an allocation is seen")
                .contains("allocated went from 161 to 162")
        );
    }
}
