// swift-tools-version:6.1
import PackageDescription

// One set of settings for every Swift target: Swift 6 language mode (strict concurrency)
// plus the upcoming features Hummingbird itself builds with.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny")
]

let package = Package(
    name: "neutrino",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "neutrino-gateway", targets: ["NeutrinoGatewayMain"]),
        .executable(name: "neutrino-worker", targets: ["NeutrinoWorkerMain"]),
        // swift-otel's OTLP exporter, loaded by both executables with dlopen only when tracing is on: linked into them
        // it loaded Foundation, FoundationInternationalization and ICU into every process (about 8 MB resident).
        .library(name: "NeutrinoOTLP", type: .dynamic, targets: ["NeutrinoOTLPExporter"]),
    ],
    dependencies: [
        // No default traits: swift-configuration support is unused, and `FullFoundation` (dates in URL-encoded
        // forms) would make Hummingbird one more reason to load all of Foundation.
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth.git", from: "2.5.0"),
        // Tracing: swift-distributed-tracing's API everywhere, swift-otel's OTLP/HTTP exporter behind it (OTLPHTTP
        // only: the default traits would also build gRPC).
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
    ],
    targets: [
        // C libraries, each behind a system-library target with its own shim header.
        .systemLibrary(
            name: "CPython", path: "Sources/CPython", pkgConfig: "python3-embed",
            providers: [.apt(["libpython3-dev"])]),
        .systemLibrary(
            name: "CNats", path: "Sources/CNats", pkgConfig: "libnats",
            providers: [.apt(["libnats-dev"])]),
        .systemLibrary(
            name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]),

        // Pure model: ids, statuses and their state machine, task specs, the manifest, JSON values, schema checks.
        .target(name: "NeutrinoCore", swiftSettings: swiftSettings),
        // The SQLite task log: schema, batched writer, idempotent event application, queries.
        .target(
            name: "NeutrinoTaskLog",
            dependencies: [
                "NeutrinoCore", "NeutrinoThreads", "CSQLite",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ], swiftSettings: swiftSettings),
        // `make bench-tasklog`: generates a task log of TASKLOG_BENCH_TASKS tasks and times every query, ingest and
        // pruning on it. A tool, not a product: nothing ships it.
        .executableTarget(
            name: "NeutrinoTaskLogBench",
            dependencies: [
                "NeutrinoCore", "NeutrinoTaskLog", "CSQLite",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ], path: "bench/tasklog", exclude: ["RESULTS-10M.md"], swiftSettings: swiftSettings),
        // The embedded CPython interpreter and the dedicated threads that run Python.
        // pthread locks and threads for the modules that stay off Foundation.
        .target(name: "NeutrinoThreads", swiftSettings: swiftSettings),
        .target(name: "NeutrinoPython", dependencies: ["NeutrinoCore", "NeutrinoThreads", "CPython"], swiftSettings: swiftSettings),
        // Logging (text or JSON lines) and the Prometheus registry behind swift-metrics, set up once per process.
        .target(
            name: "NeutrinoObservability",
            dependencies: [
                "NeutrinoCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ], swiftSettings: swiftSettings),
        // Distributed tracing: OpenTelemetry spans exported over OTLP/HTTP when an endpoint is configured, W3C
        // `traceparent` in and out; with none configured, nothing is bootstrapped and every call is a flag check.
        .target(
            name: "NeutrinoTracing",
            dependencies: [
                "NeutrinoCore",
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ], swiftSettings: swiftSettings),
        // libNeutrinoOTLP.so (the `NeutrinoOTLP` product): swift-otel behind a C interface (`OTLPPlugin`).
        .target(
            name: "NeutrinoOTLPExporter",
            dependencies: [
                "NeutrinoCore", "NeutrinoTracing",
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ], swiftSettings: swiftSettings),
        // HTTP pieces both servers share: JSON error bodies, the listening-address announcement, LifecycleService.
        .target(
            name: "NeutrinoHTTP",
            dependencies: [
                "NeutrinoCore", "NeutrinoObservability",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ], swiftSettings: swiftSettings),
        .target(
            name: "NeutrinoGateway",
            dependencies: [
                "NeutrinoCore", "NeutrinoTaskLog", "NeutrinoHTTP", "NeutrinoNATS", "NeutrinoObservability", "NeutrinoEvents",
                "NeutrinoTracing",
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HummingbirdAuth", package: "hummingbird-auth"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ], swiftSettings: swiftSettings),
        .target(
            name: "NeutrinoWorker",
            dependencies: [
                "NeutrinoCore", "NeutrinoTaskLog", "NeutrinoPython", "NeutrinoHTTP", "NeutrinoNATS", "NeutrinoObservability", "NeutrinoEvents",
                "NeutrinoTracing", "NeutrinoThreads",
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ], swiftSettings: swiftSettings),
        .executableTarget(
            name: "NeutrinoGatewayMain",
            dependencies: [
                "NeutrinoGateway", "NeutrinoObservability", "NeutrinoTracing",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ], path: "Sources/NeutrinoGatewayMain", swiftSettings: swiftSettings),
        .executableTarget(
            name: "NeutrinoWorkerMain",
            dependencies: [
                "NeutrinoWorker", "NeutrinoObservability", "NeutrinoTracing",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ], path: "Sources/NeutrinoWorkerMain", swiftSettings: swiftSettings),

        .testTarget(name: "NeutrinoCoreTests", dependencies: ["NeutrinoCore"], swiftSettings: swiftSettings),
        .testTarget(name: "NeutrinoThreadsTests", dependencies: ["NeutrinoThreads"], swiftSettings: swiftSettings),
        .testTarget(
            name: "NeutrinoTracingTests",
            dependencies: [
                "NeutrinoTracing", "NeutrinoCore", .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "NeutrinoTaskLogTests", dependencies: ["NeutrinoTaskLog", "NeutrinoTestSupport"], swiftSettings: swiftSettings),
        .testTarget(
            name: "NeutrinoGatewayTests",
            dependencies: [
                "NeutrinoGateway", "NeutrinoTaskLog", "NeutrinoNATS", "NeutrinoTestSupport",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ], swiftSettings: swiftSettings),
        .testTarget(name: "NeutrinoPythonTests", dependencies: ["NeutrinoPython"], swiftSettings: swiftSettings),
        .target(
            name: "NeutrinoNATS", dependencies: ["NeutrinoCore", "NeutrinoThreads", "CNats", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings),
        // A real nats-server per test, for the test targets that need NATS (not a product).
        .target(
            name: "NeutrinoTestSupport", dependencies: ["NeutrinoNATS", .product(name: "Logging", package: "swift-log")],
            path: "Tests/NeutrinoTestSupport", swiftSettings: swiftSettings),
        .testTarget(name: "NeutrinoNATSTests", dependencies: ["NeutrinoNATS", "NeutrinoTestSupport"], swiftSettings: swiftSettings),
        // Task lifecycle events over NATS (`--task-log nats`): the codec, the stream, the worker's publisher,
        // the gateway's consumer into the task log.
        .target(
            name: "NeutrinoEvents",
            dependencies: [
                "NeutrinoCore", "NeutrinoTaskLog", "NeutrinoNATS", "NeutrinoThreads", "NeutrinoObservability",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ], swiftSettings: swiftSettings),
        .testTarget(
            name: "NeutrinoEventsTests", dependencies: ["NeutrinoEvents", "NeutrinoTaskLog", "NeutrinoNATS", "NeutrinoTestSupport"],
            swiftSettings: swiftSettings),
    ],
    swiftLanguageModes: [.v6]
)
