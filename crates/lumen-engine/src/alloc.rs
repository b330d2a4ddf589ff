//! A global allocator that recycles the large buffers of a forward pass.
//!
//! candle gives every operation a freshly allocated output. Buffers of a
//! few hundred kilobytes and more go back to the operating system when
//! freed (glibc maps them with `mmap` above its threshold and trims its
//! heaps), so each layer of each forward pass faults the same amount of
//! memory in again, page by page: in a 1024-token prefill of a 1B model
//! the kernel's page-fault and unmapping work took about 15% of the time.
//! [`Recycler`] keeps freed blocks from 256 KiB up, by size class, and hands
//! them out again, so that after the first layer a forward pass runs in
//! memory it already has (`lumen bench` reports page faults per token).
//!
//! Rules:
//! - A request takes the most recently kept block of its size class (an
//!   eighth of a doubling) that is large enough, or one of the next class.
//! - Otherwise it gets fresh memory straight from the operating system, of
//!   exactly its size in pages (`mmap` on Unix; from 2 MiB up aligned to,
//!   and advised as, transparent huge pages, which also spares the TLB on
//!   weights and activations).
//! - Freed blocks are kept, newest first; beyond the limit the oldest are
//!   unmapped at once (so stale sizes give way to the ones in use). The
//!   limit is [`KEEP_LIMIT`], or what the loaded model sets with
//!   [`set_keep_limit`]: a text model's prompt chunk's buffers with a
//!   quarter to spare (1B, 256-token chunks: 34 MB; 3B: 89 MB; 8B: 130
//!   MB; a 1B model's 4096-token prompt peaked at 1.16 GB with 256 MiB,
//!   1.03 GB with a limit of its chunk's buffers, at the same speed).
//!   [`trim`] releases them all: after a model is loaded and when it is
//!   dropped, when the KV cache grows (its old storage is a size no one
//!   asks for again), and when a prompt is done and generated tokens take
//!   the single-token pass, which allocates nothing (a 128-token prompt's
//!   next prefill then starts on fresh pages: about 2% slower).
//!
//! The kept blocks are memory the process holds while idle between layers
//! (at most [`KEEP_LIMIT`]); measured with `lumen bench`: a 4096-token
//! prefill of a 1B Q4_0 model peaked at 1.40 GB instead of 1.27–1.33 GB,
//! and ran at 222 instead of 152–180 tok/s.
//!
//! A binary opts in (a library never chooses the global allocator):
//!
//! ```
//! #[global_allocator]
//! static ALLOC: lumen_engine::alloc::Recycler = lumen_engine::alloc::Recycler;
//! # fn main() {}
//! ```
//!
//! Without it everything works the same, only slower; [`trim`] and
//! [`stats`] then see an empty pool.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The smallest request kept for reuse, bytes. Below it the system
/// allocator's heap already recycles memory without faulting it in again.
pub const MIN_KEPT: usize = 256 << 10;
/// The largest request kept for reuse, bytes (larger ones are weights and
/// caches that live as long as the model).
pub const MAX_KEPT: usize = 1 << 32;
/// The most bytes kept at once, unless [`set_keep_limit`] asks for less.
pub const KEEP_LIMIT: usize = 256 << 20;

/// Bytes in front of each pooled block's data: its size and, while it is
/// kept, its links (see [`Word`]). 64 keeps the data aligned for any request
/// this pool takes (alignment ≤ 64).
const HEADER: usize = 64;
/// Size classes per doubling: a class holds blocks within an eighth of a
/// doubling of each other.
const STEPS: usize = 8;
const MIN_LOG2: usize = MIN_KEPT.trailing_zeros() as usize;
const MAX_LOG2: usize = MAX_KEPT.trailing_zeros() as usize;
const CLASSES: usize = (MAX_LOG2 - MIN_LOG2 + 1) * STEPS;
/// A request may take a kept block up to this many classes above its own.
const STRETCH: usize = 1;

/// The global allocator: the system allocator, with large blocks recycled
/// through one process-wide pool (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct Recycler;

/// What the process-wide pool has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests served from kept blocks.
    pub reused: u64,
    /// Requests that needed fresh memory.
    pub fresh: u64,
    /// Bytes kept now.
    pub kept_bytes: u64,
}

static POOL: Pool = Pool::new(KEEP_LIMIT);

/// Returns every kept block to the operating system, and on glibc the
/// free pages inside the C heap too: loading a model parses hundreds of
/// thousands of small strings (the tokenizer's vocabulary and merges in
/// the GGUF's metadata) whose freed space glibc otherwise keeps resident
/// between the allocations that live on (about 30 MB for Llama 3's
/// tokenizer).
pub fn trim() {
    POOL.trim();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free memory of the C heap; it
    // is safe to call at any time from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives back the pool's kept blocks only: [`trim`] without the walk of
/// the C heap (for callers that free large blocks several times in a row,
/// as the KV cache does layer by layer as it grows).
pub fn trim_pool() {
    POOL.trim();
}

/// Sets how many bytes of freed blocks the pool keeps (at most
/// [`KEEP_LIMIT`]): what one forward pass of the model in use allocates is
/// enough (`Model::load` sets it from the model's shapes); more only raises
/// the peak.
pub fn set_keep_limit(bytes: usize) {
    POOL.set_limit(bytes);
}

/// Counters of the process-wide pool (all zero unless a binary made
/// [`Recycler`] its global allocator).
pub fn stats() -> Stats {
    POOL.stats()
}

// SAFETY: every method upholds `GlobalAlloc`'s contract by delegating to
// `System` (pointers that are not pooled) or to `Pool`, whose blocks are
// mapped by `os::map` with room for the header in front of the data and
// are only handed out while no one else holds them (the pool's lock).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Recycler {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if pooled(layout) {
            POOL.alloc(layout.size(), false)
        } else {
            // SAFETY: the caller's layout, passed on unchanged.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if pooled(layout) {
            POOL.alloc(layout.size(), true)
        } else {
            // SAFETY: the caller's layout, passed on unchanged.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if pooled(layout) {
            // SAFETY: `ptr` came from `POOL.alloc` (same layout rule).
            unsafe { POOL.dealloc(ptr) }
        } else {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (whole body): `ptr` was allocated by this allocator with
        // `layout`; `new_size` is valid for its alignment (the caller's
        // contract).
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            match (pooled(layout), pooled(new_layout)) {
                (false, false) => System.realloc(ptr, layout, new_size),
                (true, true) if new_size + HEADER <= Pool::block_size(ptr) => ptr,
                _ => {
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    new
                }
            }
        }
    }
}

/// Whether a request goes through the pool (decided from the layout alone,
/// so that `dealloc` and `realloc` decide the same as `alloc` did).
fn pooled(layout: Layout) -> bool {
    layout.align() <= HEADER && (MIN_KEPT..=MAX_KEPT).contains(&layout.size())
}

/// The size class of a block of `size` bytes (more than `MIN_KEPT`): one
/// of `STEPS` equal steps per doubling.
fn class_of(size: usize) -> usize {
    // Powers of two belong to the top of the doubling below them.
    let e = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
    let step = 1usize << (e - STEPS.trailing_zeros() as usize);
    let units = size.div_ceil(step); // STEPS + 1 ..= 2 * STEPS
    (e - MIN_LOG2) * STEPS + units - STEPS - 1
}

/// Kept blocks: a list per size class (most recently kept first) and one
/// list of all of them by age, both linked through the blocks' headers,
/// behind a spin lock (held for a few pointer moves; memory is never mapped
/// or unmapped under it).
struct Pool {
    locked: AtomicBool,
    state: UnsafeCell<State>,
    limit: AtomicUsize,
    reused: AtomicU64,
    fresh: AtomicU64,
}

struct State {
    /// The most recently kept block of each class.
    heads: [*mut u8; CLASSES],
    /// The most and the least recently kept block.
    newest: *mut u8,
    oldest: *mut u8,
    kept: usize,
}

// SAFETY: `state` is only touched while `locked` is held (see `with`).
#[allow(unsafe_code)]
unsafe impl Sync for Pool {}

/// A block's header: the words in front of its data.
#[derive(Clone, Copy)]
enum Word {
    /// The block's size in bytes (always set).
    Size = 0,
    /// Kept blocks of the same class: the next older and next newer one.
    ClassOlder = 1,
    ClassNewer = 2,
    /// All kept blocks: the next older and next newer one.
    Older = 3,
    Newer = 4,
}

#[allow(unsafe_code)]
unsafe fn get(block: *mut u8, w: Word) -> *mut u8 {
    // SAFETY: the caller passes a block of this pool; its header holds
    // `HEADER / 8` words.
    unsafe { block.cast::<*mut u8>().add(w as usize).read() }
}

#[allow(unsafe_code)]
unsafe fn set(block: *mut u8, w: Word, value: *mut u8) {
    // SAFETY: as for `get`.
    unsafe { block.cast::<*mut u8>().add(w as usize).write(value) }
}

#[allow(unsafe_code)]
unsafe fn size_of_block(block: *mut u8) -> usize {
    // SAFETY: as for `get`.
    unsafe { get(block, Word::Size) as usize }
}

impl State {
    /// Adds a block as the newest kept one.
    #[allow(unsafe_code)]
    unsafe fn push(&mut self, block: *mut u8) {
        // SAFETY (whole body): `block` is a block of this pool that is not
        // kept; the blocks it is linked to are kept ones.
        unsafe {
            let size = size_of_block(block);
            let class = class_of(size);
            let head = self.heads[class];
            set(block, Word::ClassOlder, head);
            set(block, Word::ClassNewer, ptr::null_mut());
            if !head.is_null() {
                set(head, Word::ClassNewer, block);
            }
            self.heads[class] = block;
            set(block, Word::Older, self.newest);
            set(block, Word::Newer, ptr::null_mut());
            if self.newest.is_null() {
                self.oldest = block;
            } else {
                set(self.newest, Word::Newer, block);
            }
            self.newest = block;
            self.kept += size;
        }
    }

    /// Takes a kept block out of both lists.
    #[allow(unsafe_code)]
    unsafe fn unlink(&mut self, block: *mut u8) {
        // SAFETY (whole body): `block` is kept, so its links are kept
        // blocks or null.
        unsafe {
            let size = size_of_block(block);
            let (older, newer) = (get(block, Word::ClassOlder), get(block, Word::ClassNewer));
            if newer.is_null() {
                self.heads[class_of(size)] = older;
            } else {
                set(newer, Word::ClassOlder, older);
            }
            if !older.is_null() {
                set(older, Word::ClassNewer, newer);
            }
            let (older, newer) = (get(block, Word::Older), get(block, Word::Newer));
            if newer.is_null() {
                self.newest = older;
            } else {
                set(newer, Word::Older, older);
            }
            if older.is_null() {
                self.oldest = newer;
            } else {
                set(older, Word::Newer, newer);
            }
            self.kept -= size;
        }
    }

    /// Takes the oldest kept blocks out while more than `limit` bytes are
    /// kept, and returns them linked through `Older`.
    #[allow(unsafe_code)]
    unsafe fn evict(&mut self, limit: usize) -> *mut u8 {
        let mut out = ptr::null_mut();
        while self.kept > limit && !self.oldest.is_null() {
            let block = self.oldest;
            // SAFETY: `block` is kept; once unlinked its links are ours.
            unsafe {
                self.unlink(block);
                set(block, Word::Older, out);
            }
            out = block;
        }
        out
    }
}

impl Pool {
    const fn new(limit: usize) -> Self {
        Self {
            locked: AtomicBool::new(false),
            state: UnsafeCell::new(State {
                heads: [ptr::null_mut(); CLASSES],
                newest: ptr::null_mut(),
                oldest: ptr::null_mut(),
                kept: 0,
            }),
            limit: AtomicUsize::new(limit),
            reused: AtomicU64::new(0),
            fresh: AtomicU64::new(0),
        }
    }

    /// Runs `f` on the state under the lock.
    #[allow(unsafe_code)]
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: the lock is held until the store below; `f` cannot
        // re-enter (it does not allocate).
        let r = f(unsafe { &mut *self.state.get() });
        self.locked.store(false, Ordering::Release);
        r
    }

    /// A block's size, from its header; `data` is a pointer `alloc` returned.
    #[allow(unsafe_code)]
    unsafe fn block_size(data: *mut u8) -> usize {
        // SAFETY: the header sits `HEADER` bytes before the data.
        unsafe { size_of_block(data.sub(HEADER)) }
    }

    /// `size` bytes of data (`MIN_KEPT..=MAX_KEPT`), aligned to 64; zeroed
    /// when asked. Null when the system is out of memory.
    #[allow(unsafe_code)]
    fn alloc(&self, size: usize, zeroed: bool) -> *mut u8 {
        let needed = size + HEADER;
        let class = class_of(needed);
        let reused = self.with(|s| {
            let top = (class + STRETCH).min(CLASSES - 1);
            // Blocks of the request's own class may be a little smaller
            // than it (a class spans an eighth of a doubling); those of the
            // classes above are all larger.
            let found = (class..=top).find_map(|c| {
                let mut b = s.heads[c];
                for _ in 0..4 {
                    if b.is_null() {
                        break;
                    }
                    // SAFETY: kept blocks and their links.
                    unsafe {
                        if size_of_block(b) >= needed {
                            return Some(b);
                        }
                        b = get(b, Word::ClassOlder);
                    }
                }
                None
            });
            if let Some(b) = found {
                // SAFETY: a kept block.
                unsafe { s.unlink(b) };
            }
            found
        });
        if let Some(base) = reused {
            self.reused.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the block holds `HEADER + size` bytes or more.
            unsafe {
                let data = base.add(HEADER);
                if zeroed {
                    ptr::write_bytes(data, 0, size);
                }
                return data;
            }
        }
        self.fresh.fetch_add(1, Ordering::Relaxed);
        // Exactly what is needed (in whole pages): a block that a weight
        // keeps for good wastes nothing, and huge pages stop where it ends.
        let len = mapped_len(needed);
        // Fresh memory reads as zeros.
        let base = os::map(len);
        if base.is_null() {
            return base;
        }
        // SAFETY: the block is ours and at least `HEADER` bytes long.
        unsafe {
            set(base, Word::Size, len as *mut u8);
            base.add(HEADER)
        }
    }

    /// Takes back `data` (from `alloc`) as the newest kept block, and
    /// releases the oldest ones beyond the limit.
    #[allow(unsafe_code)]
    unsafe fn dealloc(&self, data: *mut u8) {
        // SAFETY: `data` came from `alloc`, so its header precedes it.
        let base = unsafe { data.sub(HEADER) };
        // SAFETY: as above.
        let limit = self.limit.load(Ordering::Relaxed);
        if unsafe { size_of_block(base) } > limit {
            // SAFETY: no longer in use, and never kept.
            unsafe { release(base) };
            return;
        }
        // SAFETY: the block is no longer in use.
        let evicted = self.with(|s| unsafe {
            s.push(base);
            s.evict(limit)
        });
        // SAFETY: evicted blocks are out of the pool.
        unsafe { release_list(evicted) };
    }

    /// Sets the limit (at most [`KEEP_LIMIT`]) and keeps to it at once.
    fn set_limit(&self, bytes: usize) {
        let limit = bytes.min(KEEP_LIMIT);
        self.limit.store(limit, Ordering::Relaxed);
        self.keep_at_most(limit);
    }

    fn trim(&self) {
        self.keep_at_most(0);
    }

    /// Releases the oldest kept blocks until at most `bytes` are kept.
    #[allow(unsafe_code)]
    fn keep_at_most(&self, bytes: usize) {
        // SAFETY: evicted blocks are taken out of the pool.
        let evicted = self.with(|s| unsafe { s.evict(bytes) });
        // SAFETY: as above.
        unsafe { release_list(evicted) };
    }

    fn stats(&self) -> Stats {
        Stats {
            reused: self.reused.load(Ordering::Relaxed),
            fresh: self.fresh.load(Ordering::Relaxed),
            kept_bytes: self.with(|s| s.kept) as u64,
        }
    }
}

/// The length mapped for a block of `needed` bytes: whole 4 KiB pages.
fn mapped_len(needed: usize) -> usize {
    needed.next_multiple_of(4096)
}

/// Unmaps one block that is not kept.
#[allow(unsafe_code)]
unsafe fn release(block: *mut u8) {
    // SAFETY: the caller owns the block, mapped by `os::map` with its size.
    unsafe { os::unmap(block, size_of_block(block)) }
}

/// Unmaps a list of blocks linked through `Older`.
#[allow(unsafe_code)]
unsafe fn release_list(mut block: *mut u8) {
    while !block.is_null() {
        // SAFETY: the caller owns every block in the list.
        unsafe {
            let next = get(block, Word::Older);
            release(block);
            block = next;
        }
    }
}

/// Memory for blocks straight from the operating system, so that a released
/// block is returned at once (the C allocator may keep it in its heap).
#[cfg(unix)]
#[allow(unsafe_code)]
mod os {
    use std::ptr;

    /// Blocks this large are aligned to, and advised as, transparent huge
    /// pages (fewer page faults and TLB misses on buffers that are read in
    /// full: weights, activations).
    const HUGE: usize = 2 << 20;

    /// `size` bytes of zeroed memory, aligned to 64 (to 2 MiB from 2 MiB
    /// up); null when the system has none.
    pub(super) fn map(size: usize) -> *mut u8 {
        let align = if size >= HUGE { HUGE } else { 0 };
        let len = size + align;
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choosing.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return ptr::null_mut();
        }
        let p = p.cast::<u8>();
        if align == 0 {
            return p;
        }
        // Trim the mapping to an aligned `size` (rounded up to pages).
        let page = page_size();
        let start = (p as usize).next_multiple_of(HUGE);
        let end = start + size.next_multiple_of(page);
        let (head, tail) = (start - p as usize, p as usize + len - end);
        // SAFETY: both pieces lie within the mapping made above and are
        // page-aligned (the mapping and `HUGE` are); the advice is a hint.
        unsafe {
            if head > 0 {
                libc::munmap(p.cast(), head);
            }
            if tail > 0 {
                libc::munmap(end as *mut libc::c_void, tail);
            }
            #[cfg(target_os = "linux")]
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
        start as *mut u8
    }

    /// Unmaps a block `map` returned for `size`.
    ///
    /// # Safety
    /// `p` and `size` are a block from `map` that nothing uses any more.
    pub(super) unsafe fn unmap(p: *mut u8, size: usize) {
        // SAFETY: the caller's contract; `munmap` rounds the length up to
        // pages as `map` did.
        unsafe { libc::munmap(p.cast(), size) };
    }

    fn page_size() -> usize {
        // SAFETY: a plain query.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).unwrap_or(4096)
    }
}

/// Elsewhere, blocks come from the system allocator.
#[cfg(not(unix))]
#[allow(unsafe_code)]
mod os {
    use std::alloc::{GlobalAlloc, Layout, System};

    fn layout(size: usize) -> Option<Layout> {
        Layout::from_size_align(size, super::HEADER).ok()
    }

    /// `size` bytes of zeroed memory, aligned to 64; null when there is none.
    pub(super) fn map(size: usize) -> *mut u8 {
        match layout(size) {
            // SAFETY: a non-zero size and a valid alignment.
            Some(l) => unsafe { System.alloc_zeroed(l) },
            None => std::ptr::null_mut(),
        }
    }

    /// Frees a block `map` returned for `size`.
    ///
    /// # Safety
    /// `p` and `size` are a block from `map` that nothing uses any more.
    pub(super) unsafe fn unmap(p: *mut u8, size: usize) {
        if let Some(l) = layout(size) {
            // SAFETY: allocated by `map` with this layout.
            unsafe { System.dealloc(p, l) }
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    /// A pool of its own for each test (the process-wide one is shared by
    /// every test thread).
    fn pool() -> Pool {
        Pool::new(64 << 20)
    }

    fn fill(p: *mut u8, n: usize, seed: u8) {
        for i in (0..n).step_by(4093) {
            unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
        }
    }

    fn check_zero(p: *mut u8, n: usize) -> bool {
        (0..n)
            .step_by(4093)
            .all(|i| unsafe { p.add(i).read() } == 0)
    }

    fn check(p: *mut u8, n: usize, seed: u8) -> bool {
        (0..n)
            .step_by(4093)
            .all(|i| unsafe { p.add(i).read() } == seed.wrapping_add(i as u8))
    }

    #[test]
    fn classes_split_each_doubling_in_eighths() {
        let m = MIN_KEPT;
        assert_eq!(class_of(m + 1), 0);
        assert_eq!(class_of(m + m / 8), 0);
        assert_eq!(class_of(m + m / 8 + 1), 1);
        assert_eq!(class_of(2 * m), STEPS - 1);
        assert_eq!(class_of(2 * m + 1), STEPS);
        assert_eq!(class_of(MAX_KEPT + HEADER), CLASSES - STEPS);
        let mut last = 0;
        for size in (m + HEADER..=64 << 20).step_by(4099) {
            let class = class_of(size);
            assert!(class == last || class == last + 1, "{size}");
            last = class;
        }
    }

    #[test]
    fn a_freed_block_is_handed_out_again_zeroed_when_asked() {
        let pool = pool();
        let n = 3 << 20;
        let a = pool.alloc(n, false);
        assert_eq!(a as usize % 64, 0);
        fill(a, n, 7);
        unsafe { pool.dealloc(a) };
        assert_eq!(pool.stats().kept_bytes as usize, mapped_len(n + HEADER));
        let b = pool.alloc(n, true);
        assert_eq!(a, b);
        assert!((0..n).all(|i| unsafe { b.add(i).read() } == 0));
        let s = pool.stats();
        assert_eq!((s.reused, s.fresh, s.kept_bytes), (1, 1, 0));
        unsafe { pool.dealloc(b) };
        pool.trim();
        assert_eq!(pool.stats().kept_bytes, 0);
    }

    #[test]
    fn a_request_may_take_a_block_of_the_next_class() {
        let pool = pool();
        let big = pool.alloc(1 << 20, false);
        unsafe { pool.dealloc(big) };
        // 1000 KiB is in the class below 1 MiB + 4 KiB.
        assert_eq!(
            class_of((1000 << 10) + HEADER) + 1,
            class_of(mapped_len((1 << 20) + HEADER))
        );
        let smaller = pool.alloc(1000 << 10, false);
        assert_eq!(big, smaller);
        // Freed under its smaller size, it returns to its own class.
        unsafe { pool.dealloc(smaller) };
        assert_eq!(pool.alloc(1 << 20, false), big);
        unsafe { pool.dealloc(big) };
        // Not for a request two classes down.
        let fresh = pool.stats().fresh;
        let small = pool.alloc(800 << 10, false);
        assert_eq!(pool.stats().fresh, fresh + 1);
        unsafe { pool.dealloc(small) };
        pool.trim();
    }

    #[test]
    fn a_full_pool_releases_its_oldest_blocks() {
        // 1 MiB requests take 1 MiB + 4 KiB blocks: three fit in 4 MiB.
        let pool = Pool::new(4 << 20);
        let blocks: Vec<_> = (0..6).map(|_| pool.alloc(1 << 20, false)).collect();
        for &b in &blocks {
            unsafe { pool.dealloc(b) };
        }
        let kept = pool.stats().kept_bytes as usize;
        assert_eq!(kept, 3 * mapped_len((1 << 20) + HEADER));
        // The three freed last are kept, the newest handed out first.
        let again: Vec<_> = (0..3).map(|_| pool.alloc(1 << 20, false)).collect();
        assert_eq!(again, [blocks[5], blocks[4], blocks[3]]);
        let fresh = pool.stats().fresh;
        let more = pool.alloc(1 << 20, false);
        assert_eq!(pool.stats().fresh, fresh + 1);
        // A block larger than the limit is never kept.
        let huge = pool.alloc(5 << 20, false);
        unsafe { pool.dealloc(huge) };
        assert_eq!(pool.stats().kept_bytes, 0);
        for b in again.into_iter().chain([more]) {
            unsafe { pool.dealloc(b) };
        }
        pool.trim();
        assert_eq!(pool.stats().kept_bytes, 0);
    }

    #[test]
    fn a_lowered_limit_is_kept_to_at_once_and_after() {
        let pool = Pool::new(8 << 20);
        let block = mapped_len((1 << 20) + HEADER);
        let blocks: Vec<_> = (0..6).map(|_| pool.alloc(1 << 20, false)).collect();
        for &b in &blocks {
            unsafe { pool.dealloc(b) };
        }
        assert_eq!(pool.stats().kept_bytes as usize, 6 * block);
        // Down to 2 MiB + 8 KiB: the oldest four go at once.
        pool.set_limit(2 * block);
        assert_eq!(pool.stats().kept_bytes as usize, 2 * block);
        let again: Vec<_> = (0..2).map(|_| pool.alloc(1 << 20, false)).collect();
        assert_eq!(again, [blocks[5], blocks[4]]);
        // A block above the new limit is no longer kept.
        let big = pool.alloc(3 << 20, false);
        unsafe { pool.dealloc(big) };
        assert_eq!(pool.stats().kept_bytes, 0);
        // Never above the default, whatever is asked.
        pool.set_limit(usize::MAX);
        assert_eq!(pool.limit.load(Ordering::Relaxed), KEEP_LIMIT);
        for b in again {
            unsafe { pool.dealloc(b) };
        }
        pool.trim();
    }

    #[test]
    fn large_blocks_are_aligned_for_huge_pages() {
        let pool = pool();
        for size in [MIN_KEPT, 2 << 20, 9 << 20, 33 << 20] {
            let p = pool.alloc(size, true);
            let base = p as usize - HEADER;
            let align = if mapped_len(size + HEADER) >= 2 << 20 {
                2 << 20
            } else {
                64
            };
            assert_eq!(base % align, 0, "{size}");
            assert!(check_zero(p, size));
            fill(p, size, 1);
            unsafe { pool.dealloc(p) };
        }
        pool.trim();
    }

    #[test]
    fn the_allocator_keeps_data_through_realloc_and_alignment() {
        let a = Recycler;
        unsafe {
            // Pooled, grown within its block: same pointer.
            let l = Layout::from_size_align(MIN_KEPT, 16).unwrap();
            let p = a.alloc(l);
            fill(p, MIN_KEPT, 3);
            let block = mapped_len(MIN_KEPT + HEADER);
            let q = a.realloc(p, l, block - HEADER);
            assert_eq!(p, q);
            assert!(check(q, MIN_KEPT, 3));
            // Grown past it: moved, data kept.
            let l = Layout::from_size_align(block - HEADER, 16).unwrap();
            let r = a.realloc(q, l, 5 << 20);
            assert!(check(r, MIN_KEPT, 3));
            // Shrunk below the pooled sizes: to the system allocator.
            let l = Layout::from_size_align(5 << 20, 16).unwrap();
            let s = a.realloc(r, l, 1000);
            assert!(check(s, 1000, 3));
            // And grown from there into the pool again.
            let l = Layout::from_size_align(1000, 16).unwrap();
            let t = a.realloc(s, l, 2 << 20);
            assert!(check(t, 1000, 3));
            a.dealloc(t, Layout::from_size_align(2 << 20, 16).unwrap());
            // Alignment beyond 64 bypasses the pool and is honoured.
            let l = Layout::from_size_align(1 << 20, 4096).unwrap();
            let u = a.alloc_zeroed(l);
            assert_eq!(u as usize % 4096, 0);
            assert_eq!(u.read(), 0);
            a.dealloc(u, l);
        }
    }

    #[test]
    fn threads_sharing_the_pool_never_share_a_block() {
        let pool: &'static Pool = Box::leak(Box::new(pool()));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut held: Vec<(usize, usize)> = Vec::new();
                    let mut x = 0x9e37_79b9u32.wrapping_mul(u32::from(t) + 1);
                    for i in 0..400 {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        let n = MIN_KEPT + (x as usize % (3 << 20));
                        let p = pool.alloc(n, i % 3 == 0);
                        fill(p, n, t);
                        held.push((p as usize, n));
                        if held.len() > 3 {
                            let (p, n) = held.remove(x as usize % held.len());
                            assert!(check(p as *mut u8, n, t), "a block was shared");
                            unsafe { pool.dealloc(p as *mut u8) };
                        }
                    }
                    for (p, n) in held {
                        assert!(check(p as *mut u8, n, t));
                        unsafe { pool.dealloc(p as *mut u8) };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a thread failed");
        }
        assert!(pool.stats().reused > 0);
        pool.trim();
        assert_eq!(pool.stats().kept_bytes, 0);
    }
}
