#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| siderite_tests::fuzzing::tftp(data));
