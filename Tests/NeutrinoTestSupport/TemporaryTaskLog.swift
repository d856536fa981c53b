import Foundation

/// A task log file's path in a fresh temporary folder (the file itself is not created).
public func temporaryTaskLogPath(_ name: String = "tasks.db") -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("neutrino-test-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir.appendingPathComponent(name).path
}
