// Package issuance implements the OAuth 2.0 / OpenID Connect protocol of a
// tally tenant: its HTTP endpoints, client authentication, and the minting and
// checking of tokens.
//
// It decides from a parsed request, a read view of replicated state (State)
// and a clock; writes go through the narrow Revoker interface. It imports no
// Raft, bbolt or NATS code (see deps_test.go): the node package wires State
// and Revoker to the Raft replica.
package issuance
