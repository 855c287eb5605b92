#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::logs::etcd_log_line(data));
