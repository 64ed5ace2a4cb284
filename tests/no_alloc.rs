//! Steady-state decoding allocates nothing: forward pass (on a 2-thread pool), sampling
//! and the sampler's history, counted by a global allocator over all threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use bitnetd::compute::Pool;
use bitnetd::model::{Logits, Model};
use bitnetd::sampler::{Sampler, SamplerConfig};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_steps_allocate_nothing_once_warm() {
    let mut model = Model::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/tiny-i2_s.gguf"),
    )
    .unwrap();
    model.set_pool(Pool::new(2, None).unwrap());
    let mut s = model.session(128);
    let mut sampler = Sampler::new(SamplerConfig {
        seed: 7,
        repeat_penalty: 1.1,
        ..SamplerConfig::default()
    })
    .unwrap();
    let prompt = [50256, 464, 3139, 286];
    prompt.iter().for_each(|&t| sampler.accept(t));
    let mut token = sampler.sample(model.forward(&mut s, &prompt, Logits::Last).unwrap());
    let mut step = |token: &mut u32| {
        sampler.accept(*token);
        *token = sampler.sample(model.forward(&mut s, &[*token], Logits::Last).unwrap());
    };
    // Warm-up: buffers grow to their decode sizes.
    for _ in 0..4 {
        step(&mut token);
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for _ in 0..64 {
        step(&mut token);
    }
    let allocated = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(allocated, 0, "{allocated} allocations in 64 decode steps");
}
