package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestBinaryImportsNoTestPackage: the tally binary links no test helper
// (…/nodetest, …/rafttest, …/proctest, …/issuancetest); the in-process
// cluster and the fault network it needs live in node/localcluster and
// raft/faultnet.
func TestBinaryImportsNoTestPackage(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps listed only %d packages: %s", len(deps), out)
	}
	for _, dep := range deps {
		if !strings.HasPrefix(dep, "github.com/tallyauth/tally/") {
			continue
		}
		for _, bad := range []string{"nodetest", "rafttest", "proctest", "issuancetest"} {
			if strings.HasSuffix(dep, "/"+bad) || strings.Contains(dep, "/"+bad+"/") {
				t.Errorf("the tally binary imports the test package %s", dep)
			}
		}
	}
}
