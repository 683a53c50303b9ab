//! The bare-metal trainer (issue 9, part 3): trains a plan compiled on the host on a Cortex-M7
//! (qemu-system-arm's `mps2-an500`) with the engine's reference kernels and prints each step's
//! loss through semihosting.
//!
//! - The plan file and the batches are embedded in flash (`include_bytes!`, 64-byte aligned so
//!   the weight section can be read in place: frozen weights never enter RAM).
//! - The arena is a static buffer handed to [`CpuBackend::with_arena`]; the plan's tables
//!   (tensors, nodes) are decoded into a small static heap. The heap's use is printed before and
//!   after training, and must not change: a step allocates nothing.
//! - RAM is capped at 256 KiB by memory.x; the firmware also prints the plan's arena and weights,
//!   its static RAM and the stack's peak (the stack is painted at start), and fails if the plan's
//!   arena and weights exceed 256 KiB.
//!
//! Output lines (parsed by scripts/mcu-test.sh): `plan ...`, `ram ...`, `step N loss L`,
//! `heap ...`, `time ...`, `done`. The exit status is 0 after `done`, 1 on any error.
#![no_std]
#![no_main]

extern crate alloc;

use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use embedded_alloc::LlffHeap as Heap;
use pock_engine::exec::{Backend, CpuBackend, CpuKernels, ProgramKind};
use pock_engine::plan::{DType, Loss, RuntimeScalar};

/// The RAM a plan may use, arena and weights together, as `pock compile --target cortex-m7`
/// checks it (the STM32F746's SRAM left to training in the Tiny Training Engine paper).
const RAM_BUDGET: u64 = 256 * 1024;
/// The static arena (the plan states how much of it it needs).
const ARENA_WORDS: usize = 112 * 1024 / 8;
/// The heap that holds the decoded plan's tables.
const HEAP_BYTES: usize = 48 * 1024;
/// The pattern painted over the free stack to find its peak.
const PAINT: u32 = 0x5EED_F00D;

#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

static PLAN: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/plan.pock")));
static BATCHES: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/batches.bin")));

#[global_allocator]
static HEAP: Heap = Heap::empty();

static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_BYTES] = [MaybeUninit::uninit(); HEAP_BYTES];
static mut ARENA: [u64; ARENA_WORDS] = [0; ARENA_WORDS];

extern "C" {
    // cortex-m-rt's linker script: the end of .bss (the lowest address the stack may reach) and
    // the initial stack pointer (the end of RAM).
    static mut __ebss: u32;
    static _stack_start: u32;
}

#[entry]
fn main() -> ! {
    paint_stack();
    // SAFETY: called once, before anything allocates; HEAP_MEM is used by nothing else.
    unsafe { HEAP.init(addr_of_mut!(HEAP_MEM) as usize, HEAP_BYTES) }
    match train() {
        Ok(()) => {
            hprintln!("done");
            debug::exit(debug::EXIT_SUCCESS);
        }
        Err(message) => {
            hprintln!("error: {}", message);
            debug::exit(debug::EXIT_FAILURE);
        }
    }
    loop {
        cortex_m::asm::wfi();
    }
}

fn train() -> Result<(), alloc::string::String> {
    use alloc::format;
    let (plan, range) = pock_engine::decode_plan(&PLAN.0).map_err(|e| format!("the embedded plan: {e}"))?;
    let p = plan.plan();
    hprintln!(
        "plan {} target {} arena {} weights {} trainable-in-arena {} total {} budget {}",
        p.model,
        p.target,
        p.arena_bytes,
        p.weight_bytes,
        p.persistent_bytes,
        p.arena_bytes + p.weight_bytes,
        RAM_BUDGET
    );
    if p.arena_bytes + p.weight_bytes > RAM_BUDGET {
        return Err(format!(
            "the plan's arena and weights take {} bytes, more than {RAM_BUDGET}: train fewer parameters (--update bias or last:K) or use a smaller --batch; `pock compile --target cortex-m7` refuses such plans unless --memory-budget overrides it",
            p.arena_bytes + p.weight_bytes
        ));
    }
    let Loss::SoftmaxCrossEntropy { .. } = p.training.loss else {
        return Err("this firmware trains classifiers (cross-entropy with int64 labels); compile with the default loss".into());
    };
    if p.training.accumulate != 1 {
        return Err("this firmware runs one optimizer step per batch; compile without --accumulate".into());
    }
    let train = &p.programs.train;
    let (&[x_id], Some(&y_id)) = (&train.feeds[..train.feeds.len().saturating_sub(1)], train.feeds.last()) else {
        return Err("this firmware feeds one float input and labels; the plan has other inputs".into());
    };
    let (x_info, y_info) = (p.tensor(x_id), p.tensor(y_id));
    if x_info.dtype != DType::F32 || y_info.dtype != DType::I64 {
        return Err("the plan's input must be float32 and its labels int64".into());
    }
    let (x_bytes, y_bytes) = (x_info.bytes() as usize, y_info.bytes() as usize);
    let loss_id = train.fetches[0];
    let lr_id = p.runtime_scalar(RuntimeScalar::LearningRate);
    let step_id = p.runtime_scalar(RuntimeScalar::OptimizerStep);
    let lr = p.training.learning_rate;

    // The batches: a 16-byte header, then per step x (f32) and labels (i64).
    let data = &BATCHES.0;
    let word = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
    if data.len() < 16 || &data[..4] != b"PKMB" {
        return Err("the embedded batches do not start with PKMB; write them with `cargo run --example mcu_data`".into());
    }
    let (steps, batch, features) = (word(4), word(8), word(12));
    if batch * features * 4 != x_bytes || batch * 8 != y_bytes || data.len() != 16 + steps * (x_bytes + y_bytes) {
        return Err(format!(
            "the embedded batches ({steps} steps of {batch} x {features}) do not match the plan's input ({} bytes) and labels ({} bytes); write them with the plan's batch",
            x_bytes, y_bytes
        ));
    }

    // SAFETY: ARENA is borrowed here only, once, for the rest of the program.
    let arena: &'static mut [u64] = unsafe { &mut *addr_of_mut!(ARENA) };
    let arena_given = arena.len() * 8;
    let mut backend = CpuBackend::with_arena(plan, &PLAN.0[..], range, CpuKernels::Reference, arena).map_err(|e| format!("{e}"))?;
    let (static_ram, stack_room) = ram_layout();
    hprintln!(
        "ram static {} (arena buffer {} heap {}) stack-room {} limit {}",
        static_ram,
        arena_given,
        HEAP_BYTES,
        stack_room,
        RAM_BUDGET
    );
    let heap_before = HEAP.used();

    let started = clock_cs();
    for step in 0..steps {
        let at = 16 + step * (x_bytes + y_bytes);
        backend.write(x_id, &data[at..at + x_bytes]).map_err(|e| format!("{e}"))?;
        backend.write(y_id, &data[at + x_bytes..at + x_bytes + y_bytes]).map_err(|e| format!("{e}"))?;
        if let Some(t) = lr_id {
            backend.write(t, &lr.to_le_bytes()).map_err(|e| format!("{e}"))?;
        }
        if let Some(t) = step_id {
            backend.write(t, &((step + 1) as f32).to_le_bytes()).map_err(|e| format!("{e}"))?;
        }
        backend.run(ProgramKind::Train).map_err(|e| format!("step {step}: {e}"))?;
        let mut loss = [0u8; 4];
        backend.read(loss_id, &mut loss).map_err(|e| format!("{e}"))?;
        hprintln!("step {} loss {}", step, f32::from_le_bytes(loss));
    }
    let elapsed = clock_cs().saturating_sub(started);
    let heap_after = HEAP.used();
    hprintln!("heap before {} after {}", heap_before, heap_after);
    if heap_after != heap_before {
        return Err(format!("the heap grew from {heap_before} to {heap_after} bytes while training: a step allocated"));
    }
    hprintln!("time {} steps {} ms (host clock through semihosting)", steps, elapsed * 10);
    let peak = stack_peak();
    hprintln!("ram stack-peak {} used {} limit {}", peak, static_ram + peak, RAM_BUDGET);
    Ok(())
}

/// Bytes of RAM below the stack (.data, .bss: the arena buffer, the heap) and the room left for
/// the stack above them, from cortex-m-rt's symbols.
fn ram_layout() -> (usize, usize) {
    let ebss = addr_of_mut!(__ebss) as usize;
    // SAFETY: only the symbols' addresses are taken.
    let top = unsafe { &_stack_start as *const u32 as usize };
    (ebss - 0x2000_0000, top - ebss)
}

/// Paints the free stack, from the end of .bss up to a little below the current stack pointer.
fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = addr_of_mut!(__ebss) as usize;
    while p + 256 < sp {
        // SAFETY: the words between the end of .bss and the stack pointer (less a margin for this
        // function's frame) belong to nobody yet.
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// The deepest the stack has reached since [`paint_stack`]: the first word above .bss that is no
/// longer painted.
fn stack_peak() -> usize {
    let (_, room) = ram_layout();
    let bottom = addr_of_mut!(__ebss) as usize;
    let mut p = bottom;
    // SAFETY: reads words of RAM between the end of .bss and the stack pointer.
    while p < bottom + room && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    bottom + room - p
}

/// Centiseconds since the program started, from the host through semihosting's SYS_CLOCK.
fn clock_cs() -> usize {
    // SAFETY: SYS_CLOCK takes no argument.
    unsafe { cortex_m_semihosting::syscall!(CLOCK) }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
