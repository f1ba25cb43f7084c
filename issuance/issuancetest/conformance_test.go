package issuancetest

import "testing"

// TestFakeConformance: the fake honours the issuance.State and
// issuance.Revoker contract (the node runs the same suite on its replica:
// node/replica_conformance_test.go).
func TestFakeConformance(t *testing.T) {
	RunStateConformance(t, func(*testing.T) Backend { return NewFakeBackend() })
}
