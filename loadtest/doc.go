// Package loadtest measures how fast an OAuth 2.0 token endpoint issues
// tokens, and how that compares with the least work any Go token endpoint
// must do.
//
// It holds three parts:
//
//   - Run, the one load engine: it drives a Scenario's virtual clients
//     closed loop (Concurrency workers, each sending its next request when
//     the previous answer arrives) or open loop (Rate requests per second
//     on a fixed schedule, latency measured from each request's intended
//     start so that a stalled server cannot hide behind the requests it
//     prevented: no coordinated omission). Latencies go into one HDR
//     histogram per worker, merged at the end, so the hot path takes no
//     lock. Every scenario (client credentials, introspection, refresh,
//     authorization code, mixed, revocation propagation) and the fault
//     drills run on it; RunClientCredentials is Run with a ClientCredentialsScenario
//     against one token endpoint.
//   - NewBaseline, a bare net/http token endpoint that parses the same form,
//     authenticates one client with HTTP Basic, signs the same RFC 9068 claim
//     set with the same kind of key and writes the same JSON as tally, with
//     no tenancy, lookups or metrics: the honest lower bound against which
//     the real endpoint is compared.
//   - Discover, which reads RFC 8414 (or OpenID Connect) metadata with the
//     SDK's discovery client (revocation.Discover) to find an issuer's token
//     endpoint, so the generator works against any standards-compliant
//     issuer.
//
// Compare runs the same load against two endpoints alternately and reports
// both and their ratio; WaitForToken holds off until a freshly started
// issuer issues tokens. Results are Reports, written as a text table or JSON
// (durations in milliseconds). Measured results are kept in BENCHMARKS.md
// beside this file.
//
// RunDrill breaks a cluster under load: client-credentials requests to
// every node and revocations (the writes) through the serving ones while a
// caller-supplied Fault (kill, leadership transfer, partition) is injected
// and healed; it reports the write unavailability window, the issuance
// error rate in it and the time to recover, then checks on every node that
// no acknowledged revocation was lost. A DrillReport ends in a verdict.
//
// RunAttack (attack.go) is the other kind of drill: an attack (credential
// stuffing, password spray, device-code or token guessing, a token flood)
// from many addresses (X-Forwarded-For) against every node, with real users
// of the same tenant beside it, reported side by side. It runs its own
// loops: the attack's answers are counted by kind (throttled, checked,
// succeeded), not timed.
//
// Load is sent only where the caller points it; the tally command points it
// at loopback addresses.
package loadtest
