//! What the fuzz targets share: a counting allocator (so a target can bound how much a
//! decoder allocates for a small input), NATS headers built from fuzzer data the way
//! the server would deliver them, and float-aware equality for round trips.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use async_nats::HeaderMap;

/// Counts live heap bytes and their peak; installed as the global allocator of every
/// target (each target is its own program).
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                let grown = new_size - layout.size();
                let live = LIVE.fetch_add(grown, Ordering::Relaxed) + grown;
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

/// Runs `work` and returns its result with the most heap it held at once beyond what
/// was live before (bytes).
pub fn peak_heap<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = work();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    (result, peak)
}

/// The most a decoder may hold for an input of `len` bytes: linear in the input (a
/// decoded value costs a few dozen bytes per input byte at worst) plus a constant, so a
/// length prefix claiming gigabytes can never be believed.
pub fn heap_bound(len: usize) -> usize {
    64 * 1024 + 256 * len
}

/// A message as the fuzzer writes it, in the shape of a NATS `HMSG` (so seeds are
/// readable and made from real messages): `Name: value` lines, then `\n\n`, then the
/// payload bytes (without `\n\n`, all of it is the payload). Pairs the server could never
/// deliver (a name with spaces or control characters; a value with CR or LF) are
/// dropped; a line's trailing CR is ignored.
pub fn message(data: &[u8]) -> (HeaderMap, &[u8]) {
    let (head, payload) = match find(data, b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (&data[..0], data),
    };
    (header_lines(head), payload)
}

/// The first line (a subject) and the rest, for inputs that name where they arrived.
pub fn first_line(data: &[u8]) -> (String, &[u8]) {
    match find(data, b"\n") {
        Some(at) => (
            String::from_utf8_lossy(&data[..at]).into_owned(),
            &data[at + 1..],
        ),
        None => (
            String::from_utf8_lossy(data).into_owned(),
            &data[data.len()..],
        ),
    }
}

fn find(data: &[u8], needle: &[u8]) -> Option<usize> {
    data.windows(needle.len()).position(|w| w == needle)
}

fn header_lines(head: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in String::from_utf8_lossy(head).split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic());
        if name_ok && !value.contains(['\r', '\n']) {
            map.append(name, value);
        }
    }
    map
}

/// Equality for MessagePack values that treats two floats as equal when their bits are
/// (NaN included: it survives a MessagePack round trip, and must).
pub fn same_msgpack(a: &rmpv::Value, b: &rmpv::Value) -> bool {
    use rmpv::Value as V;
    match (a, b) {
        (V::F64(x), V::F64(y)) => x.to_bits() == y.to_bits(),
        (V::F32(x), V::F32(y)) => x.to_bits() == y.to_bits(),
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_msgpack(x, y))
        }
        (V::Map(x), V::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k, v), (l, w))| same_msgpack(k, l) && same_msgpack(v, w))
        }
        _ => a == b,
    }
}
