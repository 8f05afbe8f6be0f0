// SPDX-License-Identifier: GPL-2.0-only
/*
 * Guests whose every touch of a 2MiB region needs a page table of its own,
 * and the readers of the mmu_shadow_pages stat and of kvm_shadow_stats.ko's
 * breakdown of it, for the shadow MMU tests.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "test_util.h"
#include "kvm_util.h"
#include "processor.h"
#include "svm_util.h"
#include "shadow_mmu.h"

/* The first region the next pass touches and how many, written by the host. */
static int first_touch;
static int nr_touch;

/* One pass over the regions per GUEST_SYNC, in L1 or in L2 alike. */
static void guest_touch_regions(void)
{
	int first, i;

	for (;;) {
		first = READ_ONCE(first_touch);
		for (i = 0; i < READ_ONCE(nr_touch); i++)
			READ_ONCE(*(u64 *)(TEST_GVA + (first + i) * REGION_SIZE));
		GUEST_SYNC(i);
	}
}

static void l1_guest_code(struct svm_test_data *svm)
{
	generic_svm_setup(svm, guest_touch_regions);
	run_guest(svm->vmcb, svm->vmcb_gpa);

	/* L2 neither calls L1 nor does anything L1 intercepts. */
	GUEST_FAIL("L2 exited to L1, exit code 0x%lx",
		   svm->vmcb->control.exit_code);
}

bool have_nested_npt(void)
{
	return kvm_cpu_has(X86_FEATURE_SVM) && kvm_cpu_has_npt();
}

/*
 * TEST_ASSERT() takes a failure with errno EACCES for a lack of permission
 * and skips the test, whatever the assertion is about.  To these tests, an
 * EACCES from a file they read or write, or from a module load, is an error
 * like any other: path_errno(), open_path_or_fail(), __write_file() and the
 * readers below give it back or print it themselves, and leave errno
 * cleared, so that no assertion after them can turn into a skip on it.
 *
 * path_errno(): 0 if access(@path, @mode) succeeds, else its errno.
 */
int path_errno(const char *path, int mode)
{
	int err = access(path, mode) ? errno : 0;

	errno = 0;
	return err;
}

/* Unlike open_path_or_exit(), which skips the test on ENOENT, fails it. */
int open_path_or_fail(const char *path, int flags)
{
	int fd = open(path, flags);
	int err = errno;

	errno = 0;
	TEST_ASSERT(fd >= 0, "Failed to open %s: %s", path, strerror(err));
	return fd;
}

static DIR *opendir_or_fail(const char *path)
{
	DIR *dir = opendir(path);
	int err = errno;

	errno = 0;
	TEST_ASSERT(dir, "Failed to open %s: %s", path, strerror(err));
	return dir;
}

int kmsg_open_at_end(void)
{
	int kmsg_fd = open_path_or_fail("/dev/kmsg", O_RDONLY | O_NONBLOCK);

	TEST_ASSERT(lseek(kmsg_fd, 0, SEEK_END) >= 0,
		    "Failed to skip the kernel log so far");
	return kmsg_fd;
}

bool kmsg_read_for(int kmsg_fd, const char *needle, char *match, size_t size)
{
	char record[8192], *message;
	bool found = false;
	ssize_t len;
	int err;

	for (;;) {
		len = read(kmsg_fd, record, sizeof(record) - 1);
		/* Records overwritten before they were read: go on after them. */
		if (len < 0 && errno == EPIPE)
			continue;
		if (len <= 0)
			break;
		record[len] = '\0';
		if (found || !strstr(record, needle))
			continue;
		found = true;
		message = strchr(record, ';');
		snprintf(match, size, "%s", message ? message + 1 : record);
	}
	err = errno;
	errno = 0;
	TEST_ASSERT(len < 0 && err == EAGAIN, "Failed to read /dev/kmsg: %s",
		    len < 0 ? strerror(err) : "end of file");
	return found;
}

/*
 * KVM puts its own count back when a shadow page accountant gets it wrong,
 * and says so in the kernel log: with an accountant loaded, the log shows
 * what the count cannot.  So every read of the count also fails on such a
 * report logged since the test created its first VM.
 */
static int accountant_report_fd = -1;

static void assert_no_accountant_report(void)
{
	char report[1024];

	if (accountant_report_fd < 0) {
		accountant_report_fd = kmsg_open_at_end();
		return;
	}
	TEST_ASSERT(!take_accountant_report(report, sizeof(report)),
		    "KVM caught a shadow page accountant miscounting: %s", report);
}

bool take_accountant_report(char *report, size_t size)
{
	return accountant_report_fd >= 0 &&
	       kmsg_read_for(accountant_report_fd, " left mmu_shadow_pages at ",
			     report, size);
}

/*
 * Anonymous memory is madvised NOHUGEPAGE: KVM maps it 4KiB at most.  But
 * mmap() reserves all of an anonymous mapping up front, which fails for one
 * of 2GiB in the 2GiB test guests: a memslot of more than MANY_REGIONS is
 * shmem, which it does not, and which shmem_enabled=never, the default,
 * also backs with 4KiB pages.
 */
void add_touch_memslot(struct kvm_vm *vm, int nr_regions)
{
	vm_userspace_mem_region_add(vm, nr_regions > MANY_REGIONS ?
					VM_MEM_SRC_SHMEM : VM_MEM_SRC_ANONYMOUS,
				    TEST_GPA, TEST_SLOT,
				    nr_regions * REGION_SIZE / PAGE_SIZE, 0);
}

/*
 * Every vCPU runs the same guest through the same page tables, so that it
 * shares the VM's roots with the others; each one touches the regions
 * that touch_regions() asks of it.
 */
struct kvm_vm *create_touch_vm_vcpus(struct kvm_vcpu **vcpus, int nr_vcpus,
				     int nr_regions, enum touch_mapping mapping)
{
	bool nested = mapping == MAP_4K_NESTED || mapping == MAP_1G_NESTED ||
		      mapping == MAP_4K_1G_NESTED;
	u64 slot_pages = nr_regions * REGION_SIZE / PAGE_SIZE;
	/* The regions mapped with 4KiB pages; huge pages map the rest. */
	int nr_small = mapping == MAP_4K || mapping == MAP_4K_NESTED ? nr_regions :
		       mapping == MAP_4K_2M || mapping == MAP_4K_1G_NESTED ?
		       nr_regions / 2 : 0;
	u64 huge_gpa = TEST_GPA + nr_small * REGION_SIZE;
	struct kvm_vm *vm;
	gva_t svm_gva;
	int i;

	assert_no_accountant_report();

	/*
	 * The extra pages only size memslot 0's room for page tables, which
	 * holds a stage-1 and, if nested, an NPT table page per region.
	 */
	vm = __vm_create_with_vcpus(VM_SHAPE_DEFAULT, nr_vcpus, 2 * slot_pages,
				    nested ? (void *)l1_guest_code :
					     (void *)guest_touch_regions,
				    vcpus);
	if (nested) {
		vm_enable_tdp(vm);
		for (i = 0; i < nr_vcpus; i++) {
			vcpu_alloc_svm(vm, &svm_gva);
			vcpu_args_set(vcpus[i], 1, svm_gva);
		}
	}

	add_touch_memslot(vm, nr_regions);

	/* L2's huge pages are L1's NPT pages: its own are all 4KiB. */
	for (i = 0; i < (nested ? nr_regions : nr_small); i++)
		virt_pg_map(vm, TEST_GVA + i * REGION_SIZE,
			    TEST_GPA + i * REGION_SIZE);
	if (!nested && nr_small < nr_regions)
		virt_map_level(vm, TEST_GVA + nr_small * REGION_SIZE, huge_gpa,
			       (nr_regions - nr_small) * REGION_SIZE, PG_LEVEL_2M);
	if (!nested)
		return vm;

	/* L2 uses L1's page tables, so L2 and L1 GPAs must be the same. */
	tdp_identity_map_default_memslots(vm);
	for (i = 0; i < nr_small; i++)
		tdp_map(vm, TEST_GPA + i * REGION_SIZE, TEST_GPA + i * REGION_SIZE,
			PAGE_SIZE);
	if (nr_small < nr_regions) {
		TEST_ASSERT(!(huge_gpa % PG_SIZE_1G),
			    "%d regions at 0x%lx, expected 1GiB alignment for 1GiB NPT pages",
			    nr_regions - nr_small, huge_gpa);
		tdp_identity_map_1g(vm, huge_gpa,
				    align_up((nr_regions - nr_small) * REGION_SIZE,
					     PG_SIZE_1G));
	}
	return vm;
}

struct kvm_vm *create_touch_vm(struct kvm_vcpu **vcpu, int nr_regions,
			       enum touch_mapping mapping)
{
	return create_touch_vm_vcpus(vcpu, 1, nr_regions, mapping);
}

/* Touches regions @first to @first + @nr - 1 of those the VM was created with. */
void touch_regions_from(struct kvm_vcpu *vcpu, int first, int nr)
{
	struct ucall uc;

	first_touch = first;
	nr_touch = nr;
	sync_global_to_guest(vcpu->vm, first_touch);
	sync_global_to_guest(vcpu->vm, nr_touch);
	vcpu_run(vcpu);

	switch (get_ucall(vcpu, &uc)) {
	case UCALL_SYNC:
		TEST_ASSERT(uc.args[1] == nr,
			    "Guest touched %lu regions, expected %d",
			    uc.args[1], nr);
		break;
	case UCALL_ABORT:
		REPORT_GUEST_ASSERT(uc);
	default:
		TEST_FAIL("Unexpected exit: %s",
			  exit_reason_str(vcpu->run->exit_reason));
	}
}

void touch_regions(struct kvm_vcpu *vcpu, int nr)
{
	touch_regions_from(vcpu, 0, nr);
}

static u64 __shadow_pages(struct kvm_vm *vm)
{
	u64 count = vm_get_stat(vm, mmu_shadow_pages);

	TEST_ASSERT(count < SANE_SHADOW_PAGES,
		    "mmu_shadow_pages is 0x%lx, expected < 0x%llx: it went below zero",
		    count, SANE_SHADOW_PAGES);
	return count;
}

static bool count_reads_skip_breakdown;

/*
 * For a test whose breakdown directories may lack files by design, e.g. as
 * it fails the module's debugfs allocations: it checks them itself.
 */
void skip_breakdown_on_count_reads(void)
{
	count_reads_skip_breakdown = true;
}

/*
 * The VM's count; with kvm_shadow_stats.ko loaded, only once the VM has its
 * breakdown, which the module gives every VM, and it and the one of all VMs
 * add up to the counts, see read_vm_breakdown().
 */
u64 shadow_pages(struct kvm_vm *vm)
{
	struct sp_breakdown bd;
	u64 count;

	assert_no_accountant_report();
	count = __shadow_pages(vm);
	if (count_reads_skip_breakdown ||
	    path_errno(BREAKDOWN_DEBUGFS "/pages", F_OK))
		return count;
	TEST_ASSERT(read_vm_breakdown(vm, &bd),
		    "%s/pages exists, but VM %d-%d has no breakdown",
		    BREAKDOWN_DEBUGFS, getpid(), vm->fd);
	assert_global_breakdown(NULL);
	return count;
}

bool have_kvm_debugfs(void)
{
	return !path_errno(KVM_DEBUGFS "/mmu_shadow_pages", R_OK);
}

/*
 * Writes @len bytes of @buf to @path in one write(): what the write returns,
 * or -errno if the open or the write fails, with errno cleared.
 */
ssize_t __write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY);
	ssize_t r;

	if (fd < 0) {
		r = -errno;
	} else {
		r = write(fd, buf, len);
		if (r < 0)
			r = -errno;
		close(fd);
	}
	errno = 0;
	return r;
}

void write_file(const char *path, const char *value)
{
	ssize_t len = strlen(value), r = __write_file(path, value, len);

	TEST_ASSERT(r == len, "Failed to write '%s' to %s: %s", value, path,
		    r < 0 ? strerror(-r) : "short write");
}

/* All of @path, which must hold less than @size bytes, as a string. */
static void read_whole_file(const char *path, char *buf, size_t size)
{
	int fd = open_path_or_fail(path, O_RDONLY);
	size_t len = 0;
	ssize_t r;
	int err;

	do {
		r = read(fd, buf + len, size - len);
		err = errno;
		errno = 0;
		TEST_ASSERT(r >= 0, "Failed to read %s: %s", path, strerror(err));
		len += r;
	} while (r && len < size);
	TEST_ASSERT(len < size, "%s holds %zu bytes or more, expected less",
		    path, size);
	buf[len] = '\0';
	close(fd);
}

void read_file(const char *path, char *buf, size_t size)
{
	read_whole_file(path, buf, size);
	TEST_ASSERT(*buf, "%s is empty", path);
}

u64 read_debugfs_count(const char *path)
{
	char buf[32], *end;
	u64 count;

	read_file(path, buf, sizeof(buf));
	errno = 0;
	count = strtoull(buf, &end, 10);
	TEST_ASSERT(!errno && end != buf && *end == '\n',
		    "%s holds '%s', expected a decimal count", path, buf);
	TEST_ASSERT(count < SANE_SHADOW_PAGES,
		    "%s is 0x%lx, expected < 0x%llx: it went below zero",
		    path, count, SANE_SHADOW_PAGES);
	return count;
}

/* KVM names a VM's debugfs directory after its creator's PID and VM fd. */
void vm_debugfs_path(struct kvm_vm *vm, const char *file, char *path,
		     size_t size)
{
	snprintf(path, size, KVM_DEBUGFS "/%d-%d/%s", getpid(), vm->fd, file);
}

u64 vm_debugfs_shadow_pages(struct kvm_vm *vm)
{
	char path[PATH_MAX];

	vm_debugfs_path(vm, "mmu_shadow_pages", path, sizeof(path));
	return read_debugfs_count(path);
}

u64 global_shadow_pages(void)
{
	return read_debugfs_count(KVM_DEBUGFS "/mmu_shadow_pages");
}

/* Return how many VMs have a debugfs directory, and their counts' sum. */
int sum_vm_debugfs_shadow_pages(u64 *sum)
{
	char path[PATH_MAX], tail;
	struct dirent *dent;
	int nr_vms = 0, pid, fd;
	DIR *dir;

	dir = opendir_or_fail(KVM_DEBUGFS);

	*sum = 0;
	while ((dent = readdir(dir))) {
		if (sscanf(dent->d_name, "%d-%d%c", &pid, &fd, &tail) != 2)
			continue;
		snprintf(path, sizeof(path), KVM_DEBUGFS "/%s/mmu_shadow_pages",
			 dent->d_name);
		*sum += read_debugfs_count(path);
		nr_vms++;
	}
	closedir(dir);
	return nr_vms;
}

/* Return the VM's count, once its debugfs file agrees with its stats fd. */
u64 checked_shadow_pages(struct kvm_vm *vm)
{
	u64 count = shadow_pages(vm), vm_debugfs = vm_debugfs_shadow_pages(vm);

	TEST_ASSERT(vm_debugfs == count,
		    "Per-VM debugfs mmu_shadow_pages is %lu, expected %lu as in the stats fd",
		    vm_debugfs, count);
	return count;
}

/* Return how many VMs the global count sums up. */
int assert_global_is_sum_of_vms(void)
{
	u64 global = global_shadow_pages(), sum;
	int nr_vms = sum_vm_debugfs_shadow_pages(&sum);

	TEST_ASSERT(global == sum,
		    "Global mmu_shadow_pages is %lu, expected %lu, the sum over %d VMs",
		    global, sum, nr_vms);
	return nr_vms;
}

/*
 * The VM that makes shadow pages in this configuration: the guest's own page
 * tables under shadow paging, L1's NPT tables for L2 under TDP.  NULL if
 * neither is possible.
 */
struct kvm_vm *create_busy_vm(struct kvm_vcpu **vcpu, int nr_regions)
{
	if (!kvm_is_tdp_enabled())
		return create_touch_vm(vcpu, nr_regions, MAP_4K);
	if (!have_nested_npt())
		return NULL;
	return create_touch_vm(vcpu, nr_regions, MAP_4K_NESTED);
}

/*
 * kvm_shadow_stats.ko's breakdown, Documentation/shadow-page-breakdown.rst.
 * The parsers are strict, to the letter of that document: this is the test
 * of its format as much as of its numbers.
 */
#define BREAKDOWN_FILE_SIZE	16384

static const char * const pages_columns[] = {
	"level", "direct", "guest_mode", "smm", "pages", "allocated", "zapped",
	"bytes",
};

/* Set to 1 in a boot that loaded kvm_shadow_stats.ko. */
#define BREAKDOWN_EXPECTED_ENV	"KVM_SHADOW_STATS_EXPECTED"

/*
 * Whether kvm_shadow_stats.ko keeps its breakdown here.  Without it, the
 * tests leave their checks of the breakdown out, except in a boot that
 * loaded the module: there, a missing breakdown fails the test, or the
 * boot would pass the module's configuration untested.
 */
bool have_breakdown(void)
{
	const char *expected = getenv(BREAKDOWN_EXPECTED_ENV);
	bool required = expected && !strcmp(expected, "1");
	int err = path_errno(BREAKDOWN_DEBUGFS "/pages", F_OK);

	TEST_ASSERT(!err || !required,
		    "No %s/pages (%s), expected kvm_shadow_stats.ko's breakdown: %s=1 says the boot loaded the module",
		    BREAKDOWN_DEBUGFS, strerror(err), BREAKDOWN_EXPECTED_ENV);
	return !err;
}

void vm_breakdown_path(struct kvm_vm *vm, const char *file, char *path,
		       size_t size)
{
	snprintf(path, size, BREAKDOWN_DEBUGFS "/%d-%d/%s", getpid(), vm->fd,
		 file);
}

bool vm_has_breakdown(struct kvm_vm *vm)
{
	char dir[PATH_MAX];

	vm_breakdown_path(vm, "", dir, sizeof(dir));
	return !path_errno(dir, F_OK);
}

void sp_bucket_name(int bucket, char *name, size_t size)
{
	snprintf(name, size, "level %d direct %d guest_mode %d smm %d",
		 sp_bucket_level(bucket), !!(bucket & SP_DIRECT),
		 !!(bucket & SP_GUEST_MODE), !!(bucket & SP_SMM));
}

/* Splits @line at blanks into @words; returns their number, up to @max. */
static int split_words(char *line, char **words, int max)
{
	char *save, *word;
	int nr = 0;

	for (word = strtok_r(line, " \t", &save); word && nr < max;
	     word = strtok_r(NULL, " \t", &save))
		words[nr++] = word;
	return word ? max + 1 : nr;
}

static bool parse_decimal(const char *word, u64 *value)
{
	char *end;

	if (*word < '0' || *word > '9')
		return false;
	errno = 0;
	*value = strtoull(word, &end, 10);
	return !errno && !*end;
}

/*
 * The pid, the fd and the n of a VM directory of the breakdown, named
 * <pid>-<fd>, or <pid>-<fd>.<n> if another VM held <pid>-<fd> (n >= 1).
 * False for a name of any other form.
 */
bool parse_breakdown_vm_name(const char *name, int *pid, int *fd,
			     unsigned int *n)
{
	int len = -1;
	u64 suffix;

	*n = 0;
	if (sscanf(name, "%d-%d%n", pid, fd, &len) != 2 || len < 0)
		return false;
	if (!name[len])
		return true;
	if (name[len] != '.' || !parse_decimal(name + len + 1, &suffix) ||
	    !suffix || suffix > UINT_MAX)
		return false;
	*n = suffix;
	return true;
}

/* The vm file of a VM directory must say "pid <pid>\nfd <fd>\n", no more. */
void assert_breakdown_vm_file(const char *dir, int pid, int fd)
{
	char path[PATH_MAX], text[64], expected[64];
	int actual_pid, actual_fd, len = -1;

	snprintf(path, sizeof(path), "%s/vm", dir);
	read_whole_file(path, text, sizeof(text));
	TEST_ASSERT(sscanf(text, "pid %d\nfd %d\n%n", &actual_pid, &actual_fd,
			   &len) == 2 && len >= 0,
		    "%s holds '%s', expected 'pid <pid>' and 'fd <fd>' lines",
		    path, text);
	snprintf(expected, sizeof(expected), "pid %d\nfd %d\n", actual_pid,
		 actual_fd);
	TEST_ASSERT(!strcmp(text, expected),
		    "%s holds '%s', expected exactly 'pid %d' and 'fd %d' lines",
		    path, text, actual_pid, actual_fd);
	TEST_ASSERT(actual_pid == pid && actual_fd == fd,
		    "%s says pid %d, fd %d, expected pid %d, fd %d",
		    path, actual_pid, actual_fd, pid, fd);
}

/* Cuts the next line off @text, which must end with a newline. */
static char *next_line(char **text, const char *path)
{
	char *line = *text, *end = strchr(line, '\n');

	TEST_ASSERT(end, "%s ends in '%s', expected a newline", path, line);
	*end = '\0';
	*text = end + 1;
	return line;
}

static void parse_pages(const char *path, char *text, struct sp_breakdown *bd)
{
	char *line, copy[256], *words[ARRAY_SIZE(pages_columns)];
	u64 v[ARRAY_SIZE(pages_columns)];
	int i, nr, nr_lines = 0, bucket, last = -1;
	bool valid;

	memset(bd->bucket, 0, sizeof(bd->bucket));
	TEST_ASSERT(*text, "%s is empty, expected at least a header line", path);
	while (*text) {
		line = next_line(&text, path);
		snprintf(copy, sizeof(copy), "%s", line);
		nr = split_words(line, words, ARRAY_SIZE(words));
		nr_lines++;

		if (nr_lines == 1) {
			valid = nr == ARRAY_SIZE(pages_columns);
			for (i = 0; valid && i < nr; i++)
				valid = !strcmp(words[i], pages_columns[i]);
			TEST_ASSERT(valid,
				    "%s starts with '%s', expected the header 'level direct guest_mode smm pages allocated zapped bytes'",
				    path, copy);
			continue;
		}

		valid = nr == ARRAY_SIZE(pages_columns);
		for (i = 0; valid && i < nr; i++)
			valid = parse_decimal(words[i], &v[i]);
		TEST_ASSERT(valid, "%s line %d is '%s', expected %zu decimal columns",
			    path, nr_lines, copy, ARRAY_SIZE(pages_columns));
		TEST_ASSERT(v[0] >= 1 && v[0] <= SP_MAX_LEVEL &&
			    v[1] <= 1 && v[2] <= 1 && v[3] <= 1,
			    "%s line %d is '%s', expected a level of 1 to %d and flags of 0 or 1",
			    path, nr_lines, copy, SP_MAX_LEVEL);

		/* The bucket number sorts as smm, guest_mode, direct, level. */
		bucket = sp_bucket(v[0], v[1], v[2], v[3]);
		TEST_ASSERT(bucket > last,
			    "%s line %d is '%s', expected it before the line above, by smm, guest_mode, direct, then level",
			    path, nr_lines, copy);
		last = bucket;
		TEST_ASSERT(v[4] || v[5] || v[6],
			    "%s line %d is '%s', expected a bucket with pages or events",
			    path, nr_lines, copy);
		bd->bucket[bucket] = (struct sp_bucket) {
			.pages = v[4], .allocated = v[5], .zapped = v[6],
			.bytes = v[7],
		};
	}
}

/* A VM's totals file, or with @vm false the top one, which has no peak. */
static void parse_totals(const char *path, char *text, struct sp_breakdown *bd,
			 bool vm)
{
	const struct {
		const char *key;
		u64 *value;
	} keys[] = {
		{ "pages", &bd->totals.pages },
		{ "peak", vm ? &bd->totals.peak : NULL },
		{ "allocated", &bd->totals.allocated },
		{ "zapped", &bd->totals.zapped },
		{ "bytes", &bd->totals.bytes },
		{ "page_table_bytes", &bd->totals.page_table_bytes },
	};
	const char *known = vm ?
		"pages, peak, allocated, zapped, bytes and page_table_bytes" :
		"pages, allocated, zapped, bytes and page_table_bytes";
	bool seen[ARRAY_SIZE(keys)] = {};
	char *line, copy[256], *words[2];
	int i, nr, nr_lines = 0;
	u64 value = 0;

	memset(&bd->totals, 0, sizeof(bd->totals));
	while (*text) {
		line = next_line(&text, path);
		snprintf(copy, sizeof(copy), "%s", line);
		nr = split_words(line, words, ARRAY_SIZE(words));
		nr_lines++;
		TEST_ASSERT(nr == 2 && parse_decimal(words[1], &value),
			    "%s line %d is '%s', expected 'key value' with a decimal value",
			    path, nr_lines, copy);
		for (i = 0; i < ARRAY_SIZE(keys); i++)
			if (keys[i].value && !strcmp(words[0], keys[i].key))
				break;
		TEST_ASSERT(i < ARRAY_SIZE(keys),
			    "%s line %d is '%s', expected one of %s",
			    path, nr_lines, copy, known);
		TEST_ASSERT(!seen[i], "%s line %d is '%s', a second '%s'",
			    path, nr_lines, copy, keys[i].key);
		seen[i] = true;
		*keys[i].value = value;
	}
	for (i = 0; i < ARRAY_SIZE(keys); i++)
		TEST_ASSERT(seen[i] || !keys[i].value, "%s has no '%s' line",
			    path, keys[i].key);
}

/*
 * Every shadow page has a 4KiB page table; one that shadows a guest page
 * table of level 1 to 3 also has a 4KiB array of the gfns it maps.
 */
static u64 sp_bytes(int bucket, u64 pages)
{
	bool shadowed_translation = !(bucket & SP_DIRECT) &&
				    sp_bucket_level(bucket) <= 3;

	return pages * (shadowed_translation ? 2 : 1) * PAGE_SIZE;
}

static bool unseen_zaps;

/*
 * For a test whose VMs zap pages that the walk attaching them has not shown
 * yet: such a page leaves the count that the peak reached, without ever
 * being shown as zapped, so the peak may be above the pages held with none
 * zapped.
 */
void breakdown_allow_unseen_zaps(void)
{
	unseen_zaps = true;
}

/*
 * What holds for any breakdown, of one VM or of all: the columns add up to
 * the totals, the bytes to the pages, and the pages are those found at
 * attach time (never fewer than none) plus those allocated minus those
 * zapped.  A VM's peak is also its peak file and at least the pages.  With
 * nothing zapped, the count never went down since the VM was attached or the
 * peak reset, so the peak is the pages held, unless pages went unseen, see
 * breakdown_allow_unseen_zaps().
 */
static void check_breakdown(const char *dir, const struct sp_breakdown *bd,
			    bool vm)
{
	u64 pages = 0, allocated = 0, zapped = 0, bytes = 0, found;
	u64 page_table_bytes;
	const struct sp_bucket *sb;
	char name[64];
	int b;

	for (b = 0; b < NR_SP_BUCKETS; b++) {
		sb = &bd->bucket[b];
		sp_bucket_name(b, name, sizeof(name));
		TEST_ASSERT(sb->bytes == sp_bytes(b, sb->pages),
			    "%s/pages, %s: %lu bytes, expected %lu for %lu pages",
			    dir, name, sb->bytes, sp_bytes(b, sb->pages), sb->pages);
		found = sb->pages + sb->zapped - sb->allocated;
		TEST_ASSERT(found < SANE_SHADOW_PAGES,
			    "%s/pages, %s: %lu pages with %lu allocated and %lu zapped, expected at least %lu",
			    dir, name, sb->pages, sb->allocated, sb->zapped,
			    sb->allocated - sb->zapped);
		pages += sb->pages;
		allocated += sb->allocated;
		zapped += sb->zapped;
		bytes += sb->bytes;
	}

	TEST_ASSERT(bd->totals.pages == pages && bd->totals.allocated == allocated &&
		    bd->totals.zapped == zapped && bd->totals.bytes == bytes,
		    "%s/totals: pages %lu, allocated %lu, zapped %lu, bytes %lu, expected %lu, %lu, %lu, %lu, the sums of %s/pages",
		    dir, bd->totals.pages, bd->totals.allocated, bd->totals.zapped,
		    bd->totals.bytes, pages, allocated, zapped, bytes, dir);
	page_table_bytes = pages * PAGE_SIZE;
	TEST_ASSERT(bd->totals.page_table_bytes == page_table_bytes,
		    "%s/totals: page_table_bytes %lu, expected %lu for %lu pages",
		    dir, bd->totals.page_table_bytes, page_table_bytes, pages);
	if (!vm)
		return;
	TEST_ASSERT(bd->totals.peak == bd->peak,
		    "%s/totals: peak %lu, expected %lu as in %s/peak",
		    dir, bd->totals.peak, bd->peak, dir);
	TEST_ASSERT(bd->peak >= pages, "%s/peak is %lu, expected at least %lu pages",
		    dir, bd->peak, pages);
	TEST_ASSERT(zapped || unseen_zaps || bd->peak == pages,
		    "%s/peak is %lu, expected %lu, the pages held, with none ever zapped",
		    dir, bd->peak, pages);
}

/*
 * Reads the pages file of @dir alone, as it may be read while the VM runs:
 * the lines as the module read its counters, with nothing to hold them to.
 * False if @dir has no pages file.
 */
bool read_breakdown_pages(const char *dir, struct sp_breakdown *bd)
{
	char path[PATH_MAX], *text;

	snprintf(path, sizeof(path), "%s/pages", dir);
	if (path_errno(path, F_OK))
		return false;
	text = malloc(BREAKDOWN_FILE_SIZE);
	TEST_ASSERT(text, "Failed to allocate %d bytes", BREAKDOWN_FILE_SIZE);
	read_whole_file(path, text, BREAKDOWN_FILE_SIZE);
	parse_pages(path, text, bd);
	free(text);
	return true;
}

/* Reads and checks the breakdown of @dir, a VM's if @vm, else the top one. */
static void read_breakdown(const char *dir, struct sp_breakdown *bd, bool vm)
{
	char path[PATH_MAX], *text = malloc(BREAKDOWN_FILE_SIZE);

	TEST_ASSERT(text, "Failed to allocate %d bytes", BREAKDOWN_FILE_SIZE);
	snprintf(path, sizeof(path), "%s/pages", dir);
	read_whole_file(path, text, BREAKDOWN_FILE_SIZE);
	parse_pages(path, text, bd);
	snprintf(path, sizeof(path), "%s/totals", dir);
	read_whole_file(path, text, BREAKDOWN_FILE_SIZE);
	parse_totals(path, text, bd, vm);
	bd->peak = 0;
	if (vm) {
		snprintf(path, sizeof(path), "%s/peak", dir);
		bd->peak = read_debugfs_count(path);
	}
	free(text);

	check_breakdown(dir, bd, vm);
}

/* Reads and checks the breakdown of the VM directory @dir. */
void read_breakdown_dir(const char *dir, struct sp_breakdown *bd)
{
	read_breakdown(dir, bd, true);
}

/* Reads and checks the top directory's breakdown, the sums over all VMs. */
void read_global_breakdown(struct sp_breakdown *bd)
{
	read_breakdown(BREAKDOWN_DEBUGFS, bd, false);
}

/*
 * Reads @vm's breakdown, once it holds as many pages as the VM's count in
 * the stats fd and in KVM's debugfs.  Read while no vCPU runs, so that
 * nothing changes in between.  False if the VM has no breakdown.
 */
bool read_vm_breakdown(struct kvm_vm *vm, struct sp_breakdown *bd)
{
	char dir[PATH_MAX];
	u64 count, vm_debugfs;

	if (!vm_has_breakdown(vm))
		return false;

	vm_breakdown_path(vm, "", dir, sizeof(dir));
	dir[strlen(dir) - 1] = '\0';
	read_breakdown_dir(dir, bd);
	assert_breakdown_vm_file(dir, getpid(), vm->fd);
	count = __shadow_pages(vm);
	vm_debugfs = vm_debugfs_shadow_pages(vm);
	TEST_ASSERT(bd->totals.pages == count && count == vm_debugfs,
		    "%s/pages holds %lu pages, expected %lu, the VM's mmu_shadow_pages (debugfs: %lu)",
		    dir, bd->totals.pages, count, vm_debugfs);
	return true;
}

static void add_breakdown(struct sp_breakdown *sum, const struct sp_breakdown *bd)
{
	int b;

	for (b = 0; b < NR_SP_BUCKETS; b++) {
		sum->bucket[b].pages += bd->bucket[b].pages;
		sum->bucket[b].allocated += bd->bucket[b].allocated;
		sum->bucket[b].zapped += bd->bucket[b].zapped;
		sum->bucket[b].bytes += bd->bucket[b].bytes;
	}
}

/*
 * Each VM directory must say which VM it is about, and one named like KVM's
 * must hold as many pages as KVM's count of that VM.  Every VM in KVM's
 * debugfs must have one, as the module attaches every VM (a test that makes
 * it fail to is not checked here, see skip_breakdown_on_count_reads()), and
 * the top directory must sum up the VM directories, column by column, and
 * hold KVM's global count, which counts every VM, those that KVM's debugfs
 * has no directory for included.  Gives the top directory's breakdown in
 * @global if not NULL.
 */
void assert_global_breakdown(struct sp_breakdown *global)
{
	struct sp_breakdown sum = {}, top, bd;
	int nr_vms = 0, nr_named = 0, nr_kvm_vms, pid, fd, b;
	char path[PATH_MAX], name[64];
	u64 count, kvm_sum;
	struct dirent *dent;
	unsigned int n;
	DIR *dir;

	dir = opendir_or_fail(BREAKDOWN_DEBUGFS);
	while ((dent = readdir(dir))) {
		if (!parse_breakdown_vm_name(dent->d_name, &pid, &fd, &n))
			continue;
		snprintf(path, sizeof(path), BREAKDOWN_DEBUGFS "/%s", dent->d_name);
		read_breakdown_dir(path, &bd);
		assert_breakdown_vm_file(path, pid, fd);
		add_breakdown(&sum, &bd);
		nr_vms++;
		/* KVM's own directory of that name is another VM's. */
		if (n)
			continue;
		snprintf(path, sizeof(path), KVM_DEBUGFS "/%s/mmu_shadow_pages",
			 dent->d_name);
		count = read_debugfs_count(path);
		TEST_ASSERT(bd.totals.pages == count,
			    "%s/%s/pages holds %lu pages, expected %lu, KVM's mmu_shadow_pages of the VM",
			    BREAKDOWN_DEBUGFS, dent->d_name, bd.totals.pages, count);
		nr_named++;
	}
	closedir(dir);

	read_global_breakdown(&top);
	if (global)
		*global = top;

	/* A VM without a breakdown would leave the top's sums unchecked. */
	nr_kvm_vms = sum_vm_debugfs_shadow_pages(&kvm_sum);
	TEST_ASSERT(nr_named == nr_kvm_vms,
		    "%d VMs have a breakdown named <pid>-<fd>, expected one for each of the %d VMs in %s",
		    nr_named, nr_kvm_vms, KVM_DEBUGFS);

	for (b = 0; b < NR_SP_BUCKETS; b++) {
		sp_bucket_name(b, name, sizeof(name));
		TEST_ASSERT(!memcmp(&top.bucket[b], &sum.bucket[b], sizeof(sum.bucket[b])),
			    "%s/pages, %s: pages %lu, allocated %lu, zapped %lu, expected %lu, %lu, %lu, the sums over %d VMs",
			    BREAKDOWN_DEBUGFS, name, top.bucket[b].pages, top.bucket[b].allocated,
			    top.bucket[b].zapped, sum.bucket[b].pages,
			    sum.bucket[b].allocated, sum.bucket[b].zapped, nr_vms);
	}

	count = global_shadow_pages();
	TEST_ASSERT(top.totals.pages == count,
		    "%s/pages holds %lu pages, expected %lu, KVM's global mmu_shadow_pages",
		    BREAKDOWN_DEBUGFS, top.totals.pages, count);
}

/*
 * From @before to @after, each bucket's pages must have moved by what was
 * allocated less what was zapped (neither of which ever goes down), and by
 * @expected's deltas.  The peak must follow: with nothing allocated it
 * stays, with nothing zapped the count only grew, so the peak is the old
 * one or the count now.  No peak reset may come in between.
 */
void assert_breakdown_step(const struct sp_breakdown *before,
			   const struct sp_breakdown *after,
			   const struct sp_delta *expected, const char *what)
{
	s64 pages, allocated, zapped;
	u64 peak;
	char name[64];
	int b;

	for (b = 0; b < NR_SP_BUCKETS; b++) {
		sp_bucket_name(b, name, sizeof(name));
		pages = after->bucket[b].pages - before->bucket[b].pages;
		allocated = after->bucket[b].allocated - before->bucket[b].allocated;
		zapped = after->bucket[b].zapped - before->bucket[b].zapped;
		TEST_ASSERT(allocated >= 0 && zapped >= 0,
			    "%s, %s: allocated went from %lu to %lu, zapped from %lu to %lu, expected neither to go down",
			    what, name, before->bucket[b].allocated,
			    after->bucket[b].allocated, before->bucket[b].zapped,
			    after->bucket[b].zapped);
		TEST_ASSERT(pages == allocated - zapped,
			    "%s, %s: pages went from %lu to %lu, expected %+ld, %ld allocated less %ld zapped",
			    what, name, before->bucket[b].pages, after->bucket[b].pages,
			    allocated - zapped, allocated, zapped);
		TEST_ASSERT(expected->any_pages || pages == expected->pages[b],
			    "%s, %s: pages went from %lu to %lu, expected %+ld",
			    what, name, before->bucket[b].pages, after->bucket[b].pages,
			    expected->pages[b]);
		TEST_ASSERT(expected->any_allocated || allocated == expected->allocated[b],
			    "%s, %s: %ld pages allocated, expected %ld",
			    what, name, allocated, expected->allocated[b]);
		TEST_ASSERT(expected->any_zapped || zapped == expected->zapped[b],
			    "%s, %s: %ld pages zapped, expected %ld",
			    what, name, zapped, expected->zapped[b]);
	}

	if (after->totals.allocated == before->totals.allocated)
		TEST_ASSERT(after->peak == before->peak,
			    "%s: peak went from %lu to %lu, expected no change as no page was allocated",
			    what, before->peak, after->peak);
	if (after->totals.zapped == before->totals.zapped) {
		peak = max(before->peak, after->totals.pages);
		TEST_ASSERT(after->peak == peak,
			    "%s: peak went from %lu to %lu with %lu pages, expected %lu as no page was zapped",
			    what, before->peak, after->peak, after->totals.pages, peak);
	}
}

/* The pages column of @actual must be @expected's, bucket for bucket. */
void assert_breakdown_pages_equal(const struct sp_breakdown *expected,
				  const struct sp_breakdown *actual,
				  const char *what)
{
	char name[64];
	int b;

	for (b = 0; b < NR_SP_BUCKETS; b++) {
		sp_bucket_name(b, name, sizeof(name));
		TEST_ASSERT(actual->bucket[b].pages == expected->bucket[b].pages,
			    "%s, %s: %lu pages, expected %lu",
			    what, name, actual->bucket[b].pages,
			    expected->bucket[b].pages);
	}
}

/* A VM whose shadow MMU never had a page: not a line below the header. */
void assert_breakdown_empty(const struct sp_breakdown *bd, const char *what)
{
	TEST_ASSERT(!bd->totals.pages && !bd->totals.allocated && !bd->totals.zapped,
		    "%s: %lu pages, %lu allocated, %lu zapped, expected none",
		    what, bd->totals.pages, bd->totals.allocated, bd->totals.zapped);
}

/*
 * Whether this kernel runs on 5-level page tables, which KVM's NPT then has
 * too: the kernel clears the CPU's la57 flag when it does not (no5lvl, or a
 * CPU without LA57).
 */
static bool host_has_5level_paging(void)
{
	char line[4096];
	bool la57 = false;
	FILE *cpuinfo;

	cpuinfo = fopen("/proc/cpuinfo", "r");
	TEST_ASSERT(cpuinfo, "Failed to open /proc/cpuinfo");
	while (!la57 && fgets(line, sizeof(line), cpuinfo))
		la57 = !strncmp(line, "flags", 5) && strstr(line, " la57");
	fclose(cpuinfo);
	return la57;
}

/*
 * The level of a vCPU's root shadow page: under shadow paging, the top
 * level of the guest's page tables; under nested NPT, the top level of the
 * host's own NPT, whatever L1's (kvm_init_shadow_npt_mmu() takes the root's
 * level from kvm_mmu_get_tdp_level()): 5-level L1 NPT tables on a 4-level
 * host, KVM advertising LA57 to guests either way, still get a 4-level root.
 */
int shadow_root_level(struct kvm_vm *vm, bool nested)
{
	if (!nested)
		return vm->mmu.pgtable_levels;
	return host_has_5level_paging() ? 5 : 4;
}
