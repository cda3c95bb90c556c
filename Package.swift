// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "cached",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "cached", targets: ["cached"]),
        .library(name: "CachedProtocol", targets: ["CachedProtocol"]),
        .library(name: "CachedCore", targets: ["CachedCore"]),
        .library(name: "CachedClient", targets: ["CachedClient"]),
        .executable(name: "cachectl", targets: ["cachectl"]),
        .executable(name: "cached-bench", targets: ["cached-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.24.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.30.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.2.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", from: "1.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
    ],
    targets: [
        // MARK: C libraries
        .systemLibrary(
            name: "CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),

        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),

        // MARK: Libraries
        .target(
            name: "CachedProtocol",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        // The fuzz check (Fuzz/, `make fuzz`); also replayed over the corpus by CachedProtocolTests.
        .target(
            name: "CachedFuzzCheck",
            dependencies: [
                "CachedProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .target(
            name: "CachedRedis",
            dependencies: [
                "CHiredis",
                "CachedProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "CachedCore",
            dependencies: [
                "CachedProtocol",
                "CachedRedis",
                "CSystemd",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),

        .target(
            name: "CachedClient",
            dependencies: [
                "CachedProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
            ]
        ),

        // MARK: Executables
        .executableTarget(
            name: "cachectl",
            dependencies: [
                "CachedClient",
                "CachedProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "cached",
            dependencies: [
                "CachedCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        .executableTarget(
            name: "cached-bench",
            dependencies: [
                "CachedProtocol",
                "CachedClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),

        // MARK: Tests
        .target(
            name: "CachedTestSupport",
            dependencies: [
                "CachedProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Tests/CachedTestSupport"
        ),
        .testTarget(
            name: "CachedProtocolTests",
            dependencies: ["CachedProtocol", "CachedFuzzCheck", "CachedTestSupport"]
        ),
        .testTarget(
            name: "CachedRedisTests",
            dependencies: [
                "CachedRedis",
                "CachedTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "CachedCoreTests",
            dependencies: [
                "CachedCore",
                "CachedFuzzCheck",
                "CachedTestSupport",
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
                "CachedProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "CachedClientTests",
            dependencies: ["CachedClient", "CachedTestSupport", "CachedProtocol"]
        ),
        .testTarget(
            name: "CachedIntegrationTests",
            dependencies: [
                "CachedProtocol",
                "CachedTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

// The libFuzzer target, only with CACHED_FUZZ set (`make fuzz`): its `main` comes from `-sanitize=fuzzer`.
if Context.environment["CACHED_FUZZ"] != nil {
    package.targets.append(
        .executableTarget(
            name: "CachedFuzz",
            dependencies: ["CachedFuzzCheck"],
            path: "Fuzz/CachedFuzz",
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ))
    package.products.append(.executable(name: "CachedFuzz", targets: ["CachedFuzz"]))
}
