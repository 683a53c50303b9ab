//! The engine's messages, behind features: `log` (hosted targets; on with `std`) and `defmt`
//! (microcontrollers). With neither, [`diag!`] expands to nothing: the message's arguments are not
//! evaluated and no formatting code or string is compiled in. Messages use the `{}` placeholders
//! that both crates accept, with arguments that both can format (integers, floats, `str`).

/// `diag!(level, "format", args...)` with `level` one of `error`, `warn`, `info`, `debug`,
/// `trace`: the message goes to `log` and/or `defmt`, whichever features are on.
macro_rules! diag {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "log")]
        ::log::$level!($($arg)+);
        #[cfg(feature = "defmt")]
        ::defmt::$level!($($arg)+);
    }};
}
pub(crate) use diag;

#[cfg(all(test, feature = "log"))]
mod tests {
    /// Counts this test's log records (other tests of the binary may log meanwhile).
    struct Counter;
    static RECORDS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    impl log::Log for Counter {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            if alloc::format!("{}", record.args()) == "arena 3 bytes" {
                RECORDS.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
            }
        }
        fn flush(&self) {}
    }

    /// With `log` on (the `std` build the tests run in) a message is formatted and emitted once
    /// the level is enabled, and not even evaluated below it.
    #[test]
    fn messages_reach_log_and_cost_nothing_below_its_level() {
        use core::sync::atomic::Ordering::SeqCst;
        let mut evaluated = 0;
        log::set_max_level(log::LevelFilter::Off);
        super::diag!(info, "arena {} bytes", {
            evaluated += 1;
            3
        });
        assert_eq!(evaluated, 0, "the arguments of a disabled message were evaluated");
        log::set_logger(&Counter).expect("no other test sets a logger");
        log::set_max_level(log::LevelFilter::Info);
        super::diag!(info, "arena {} bytes", {
            evaluated += 1;
            3
        });
        super::diag!(debug, "arena {} bytes", {
            evaluated += 1;
            3
        });
        assert_eq!((evaluated, RECORDS.load(SeqCst)), (1, 1));
    }
}
