import CachedFuzzCheck

#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer's per-input callback: the shared check, and a crash (which libFuzzer saves) on a violation.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let violations = checkCachedInput(bytes)
    if !violations.isEmpty {
        for v in violations { print("cached fuzz invariant failed: \(v)") }
        fflush(nil)  // all streams
        abort()
    }
    return 0
}

/// libFuzzer's driver (in the `-sanitize=fuzzer` runtime).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// SwiftPM links an executable target's `main` to `<Module>_main` (`--defsym main=CachedFuzz_main`), which
/// keeps libFuzzer's own `main` out; this one hands the command line to libFuzzer's driver instead.
@_cdecl("CachedFuzz_main")
public func cachedFuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, { data, size in fuzz(data, size) })
}
