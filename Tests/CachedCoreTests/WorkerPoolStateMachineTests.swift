import CachedProtocol
@testable import CachedCore
import NIOCore
import Testing

/// The worker pool's decisions, without processes: calls are plain numbers.
@Suite("WorkerPool state machine")
struct WorkerPoolStateMachineTests {
    typealias Machine = WorkerPoolStateMachine<Int>

    func machine(workers: Int = 2, queueLimit: Int = 2) -> Machine {
        Machine(
            configuration: .init(
                workers: workers, queueLimit: queueLimit, restartMinDelay: .milliseconds(100),
                restartMaxDelay: .seconds(1)))
    }

    /// Spawns every slot; returns the incarnations.
    func spawnAll(_ m: inout Machine) -> [Machine.Incarnation] {
        (0..<m.slots.count).map { slot in
            let incarnation = m.spawnStarting(slot: slot)!
            _ = m.spawned(slot: slot, incarnation: incarnation, pid: Int32(100 + slot))
            return incarnation
        }
    }

    @Test func callsGoToIdleWorkersThenQueueThenOverload() {
        var m = machine()
        let inc = spawnAll(&m)
        guard case .dispatch(let d1) = m.submit(1), case .dispatch(let d2) = m.submit(2) else {
            Issue.record("expected two dispatches")
            return
        }
        #expect(Set([d1.slot, d2.slot]) == [0, 1])
        #expect(d1.requestID != d2.requestID)
        guard case .enqueued = m.submit(3), case .enqueued = m.submit(4) else {
            Issue.record("expected two queued calls")
            return
        }
        guard case .reject(let error) = m.submit(5) else {
            Issue.record("expected overload")
            return
        }
        #expect(error.code == .overloaded)
        #expect(m.busy == 2 && m.queue.count == 2)

        // The answer of call 1 completes it and hands call 3 (FIFO) to the same worker.
        let outcome = m.answerReceived(
            slot: d1.slot, incarnation: inc[d1.slot], requestID: d1.requestID, result: .success(ByteBuffer(string: "v")))
        #expect(outcome.completed?.call == 1)
        #expect(outcome.next?.call == 3)
        #expect(outcome.next?.slot == d1.slot)
        #expect(!outcome.stopWorker)
        #expect(m.calls == 1)
    }

    @Test func wrongIdFailsTheCallAndStopsTheWorker() {
        var m = machine(workers: 1)
        let inc = spawnAll(&m)
        guard case .dispatch(let d) = m.submit(1) else { return #expect(Bool(false)) }
        let outcome = m.answerReceived(slot: 0, incarnation: inc[0], requestID: d.requestID + 7, result: .success(nil))
        #expect(outcome.completed?.call == 1)
        #expect((try? outcome.completed?.result.get()) == nil)
        if case .failure(let error)? = outcome.completed?.result { #expect(error.code == .handlerError) }
        #expect(outcome.stopWorker)
        // Stopping: new calls queue instead of going to it.
        guard case .enqueued = m.submit(2) else { return #expect(Bool(false)) }
    }

    @Test func unsolicitedLineStopsAnIdleWorker() {
        var m = machine(workers: 1)
        let inc = spawnAll(&m)
        let outcome = m.protocolViolation(slot: 0, incarnation: inc[0], reason: "garbage")
        #expect(outcome.completed == nil)
        #expect(outcome.stopWorker)
    }

    @Test func timeoutFailsTheCallOnceAndLateAnswersAreIgnored() {
        var m = machine(workers: 1)
        let inc = spawnAll(&m)
        guard case .dispatch(let d) = m.submit(1) else { return #expect(Bool(false)) }
        let outcome = m.timedOut(requestID: d.requestID, timeout: .milliseconds(500))
        if case .failure(let error)? = outcome.completed?.result { #expect(error.code == .handlerTimeout) } else {
            Issue.record("expected a timeout")
        }
        #expect(outcome.stopWorker)
        #expect(m.timeouts == 1)
        // A second timer firing, a late answer, the exit: none completes the call again.
        #expect(m.timedOut(requestID: d.requestID, timeout: .milliseconds(500)).completed == nil)
        #expect(m.answerReceived(slot: 0, incarnation: inc[0], requestID: d.requestID, result: .success(nil)).completed == nil)
        let exit = m.exited(slot: 0, incarnation: inc[0], pid: 100, status: "signal 15", uptime: .seconds(1), spawnError: nil)
        #expect(exit.failed.isEmpty)
        #expect(exit.restartDelay == .milliseconds(100))
    }

    @Test func aQueuedCallTimesOutWithoutTouchingTheWorkers() {
        var m = machine(workers: 1)
        let inc = spawnAll(&m)
        guard case .dispatch(let d) = m.submit(1), case .enqueued(let queuedID) = m.submit(2), case .enqueued = m.submit(3) else {
            return #expect(Bool(false))
        }
        let outcome = m.timedOut(requestID: queuedID, timeout: .seconds(1))
        #expect(outcome.completed?.call == 2)
        if case .failure(let error)? = outcome.completed?.result { #expect(error.code == .handlerTimeout) }
        #expect(!outcome.stopWorker)
        #expect(m.queue.map(\.call) == [3])
        // The worker's answer then goes to call 1 and hands it call 3.
        let answered = m.answerReceived(slot: 0, incarnation: inc[0], requestID: d.requestID, result: .success(nil))
        #expect(answered.completed?.call == 1)
        #expect(answered.next?.call == 3)
    }

    @Test func crashFailsTheCallInFlightAndQueuedCallsWaitForTheReplacement() {
        var m = machine(workers: 1)
        let inc = spawnAll(&m)
        guard case .dispatch = m.submit(1), case .enqueued = m.submit(2) else { return #expect(Bool(false)) }
        let exit = m.exited(slot: 0, incarnation: inc[0], pid: 100, status: "exit 3", uptime: .seconds(1), spawnError: nil)
        #expect(exit.failed.map(\.call) == [1])
        #expect(exit.failed.first?.error.code == .handlerError)
        #expect(m.queue.count == 1)
        let next = m.spawnStarting(slot: 0)!
        guard case .dispatch(let d) = m.spawned(slot: 0, incarnation: next, pid: 101) else { return #expect(Bool(false)) }
        #expect(d.call == 2)
        #expect(m.restarts == 1)
    }

    @Test func backoffDoublesUpToTheMaximumAndResetsWhenHealthy() {
        var m = machine(workers: 1)
        var delays: [Duration] = []
        for _ in 0..<6 {
            let inc = m.spawnStarting(slot: 0)!
            _ = m.spawned(slot: 0, incarnation: inc, pid: 1)
            delays.append(m.exited(slot: 0, incarnation: inc, pid: 1, status: "exit 1", uptime: .milliseconds(20), spawnError: nil).restartDelay!)
        }
        #expect(delays == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1), .seconds(1)])
        // A worker that answered a call was healthy: the next delay is the minimum again.
        let inc = m.spawnStarting(slot: 0)!
        _ = m.spawned(slot: 0, incarnation: inc, pid: 1)
        guard case .dispatch(let d) = m.submit(9) else { return #expect(Bool(false)) }
        _ = m.answerReceived(slot: 0, incarnation: inc, requestID: d.requestID, result: .success(nil))
        #expect(m.exited(slot: 0, incarnation: inc, pid: 1, status: "exit 0", uptime: .milliseconds(20), spawnError: nil).restartDelay == .milliseconds(100))
        // So does one that lived long enough.
        let inc2 = m.spawnStarting(slot: 0)!
        _ = m.spawned(slot: 0, incarnation: inc2, pid: 1)
        _ = m.exited(slot: 0, incarnation: inc2, pid: 1, status: "exit 1", uptime: .milliseconds(20), spawnError: nil)
        let inc3 = m.spawnStarting(slot: 0)!
        _ = m.spawned(slot: 0, incarnation: inc3, pid: 1)
        #expect(m.exited(slot: 0, incarnation: inc3, pid: 1, status: "exit 1", uptime: .seconds(10), spawnError: nil).restartDelay == .milliseconds(100))
    }

    @Test func spawnFailureFailsWaitingCallsAndRejectsNewOnes() {
        var m = machine(workers: 1)
        let inc = m.spawnStarting(slot: 0)!
        guard case .enqueued = m.submit(1) else { return #expect(Bool(false)) }
        let exit = m.exited(slot: 0, incarnation: inc, pid: nil, status: "spawn failed", uptime: .zero, spawnError: "not found")
        #expect(exit.failed.map(\.call) == [1])
        guard case .reject(let error) = m.submit(2) else { return #expect(Bool(false)) }
        #expect(error.code == .handlerError)
        // Once a spawn succeeds, calls are accepted again.
        let next = m.spawnStarting(slot: 0)!
        _ = m.spawned(slot: 0, incarnation: next, pid: 5)
        guard case .dispatch = m.submit(3) else { return #expect(Bool(false)) }
    }

    @Test func shutdownFailsQueuedCallsStopsWorkersAndFailsInFlightCallsAtExit() {
        var m = machine(workers: 2, queueLimit: 5)
        let inc = spawnAll(&m)
        guard case .dispatch(let d) = m.submit(1) else { return #expect(Bool(false)) }
        _ = m.submit(2)
        _ = m.submit(3)
        let action = m.shutdown()
        #expect(action.failed.map(\.call) == [3])
        #expect(action.failed.first?.error.code == .shuttingDown)
        #expect(Set(action.stop) == [0, 1])
        guard case .reject(let error) = m.submit(4) else { return #expect(Bool(false)) }
        #expect(error.code == .shuttingDown)
        // Both workers were busy (calls 1 and 2): each call fails as its worker exits.
        for slot in 0..<2 {
            let exit = m.exited(slot: slot, incarnation: inc[slot], pid: 1, status: "signal 15", uptime: .seconds(1), spawnError: nil)
            #expect(exit.failed.map(\.call) == [slot == d.slot ? d.call : 3 - d.call])
            #expect(exit.failed.first?.error.code == .shuttingDown)
            #expect(exit.restartDelay == nil)
        }
        #expect(m.spawnStarting(slot: 0) == nil)
        #expect(m.alive == 0)
    }

    @Test func aSlotSpawnedDuringShutdownIsStopped() {
        var m = machine(workers: 1)
        let inc = m.spawnStarting(slot: 0)!
        _ = m.shutdown()
        guard case .stop = m.spawned(slot: 0, incarnation: inc, pid: 9) else { return #expect(Bool(false)) }
    }

    @Test func answerParsing() {
        func parse(_ text: String) -> WorkerProtocol.Answer {
            var text = text
            return text.withUTF8 { WorkerProtocol.parseAnswer(UnsafeRawBufferPointer($0), pid: 42) }
        }
        #expect(parse(#"{"jsonrpc":"2.0","id":3,"result":"héllo"}"#) == .answer(id: 3, .success(ByteBuffer(string: "héllo"))))
        #expect(parse(#"{"jsonrpc":"2.0","id":3,"result":null}"#) == .answer(id: 3, .success(nil)))
        #expect(parse(#"{"id":4,"result":{"value":"AP8=","encoding":"base64"}}"#) == .answer(id: 4, .success(ByteBuffer(bytes: [0, 255]))))
        #expect(parse(#"{"id":4,"result":{"value":"x","encoding":"utf8"}}"#) == .answer(id: 4, .success(ByteBuffer(string: "x"))))
        #expect(parse("  \r") == .blank)
        guard case .answer(5, .failure(let error)) = parse(#"{"id":5,"error":{"code":7,"message":"no"}}"#) else {
            Issue.record("expected an error answer")
            return
        }
        #expect(error.code == .handlerError)
        #expect(error.message == "handler error: no")
        #expect(error.data == .object(["code": .number("7"), "worker": .number("42")]))
        for bad in ["nope", "[1]", #"{"id":1}"#, #"{"id":1,"result":5}"#, #"{"id":1,"result":{"value":"!!","encoding":"base64"}}"#] {
            guard case .invalid = parse(bad) else {
                Issue.record("\(bad) should be invalid")
                continue
            }
        }
    }

    @Test func requestEncoding() {
        let address = EntryAddress(
            key: "Student", identity: .integer("42"), hash: HashAddress(hashKey: "Class", hashId: .string("b")))
        let params = WorkerProtocol.encodeParams(
            key: "Student", address: address, arguments: HandlerArguments(args: [.number("1")], kwargs: ["x": .bool(true)]))
        let line = String(decoding: WorkerProtocol.requestLine(id: 9, params: params), as: UTF8.self)
        #expect(
            line
                == #"{"jsonrpc":"2.0","id":9,"method":"sync","params":{"key":"Student","identity":42,"hashKey":"Class","hashId":"b","args":[1],"kwargs":{"x":true}}}"#
                + "\n")
    }

    @Test func lineSplitterKeepsPartialLinesAndTruncates() {
        var splitter = LineSplitter(maxLineBytes: 5)
        var lines: [(String, Int)] = []
        for chunk in ["ab", "c\nde", "fghij\n\nxy"] {
            var chunk = chunk
            chunk.withUTF8 { bytes in
                _ = splitter.feed(UnsafeRawBufferPointer(bytes)) { line, truncated in
                    lines.append((String(decoding: line, as: UTF8.self), truncated))
                    return true
                }
            }
        }
        #expect(lines.map(\.0) == ["abc", "defgh", ""])
        #expect(lines.map(\.1) == [0, 2, 0])
        #expect(!splitter.isOverLong)
    }

    @Test func workersDoNotInheritSocketActivationVariables() {
        var configuration = DaemonConfiguration.HandlerConfiguration(command: ["w"])
        configuration.environment = ["A": "1"]
        let overrides = WorkerPool.environmentOverrides(configuration)
        for name in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"] {
            #expect(overrides[name] == .some(nil))
        }
        #expect(overrides["A"] == .some("1"))
    }
}
