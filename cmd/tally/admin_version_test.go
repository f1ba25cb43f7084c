package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/node/nodetest"
)

// TestAdminClusterVersion: `tally admin cluster status` shows the recorded
// cluster version and features; `cluster downgrade` lowers and holds it
// and `--cancel` lets the leader raise it again.
func TestAdminClusterVersion(t *testing.T) {
	c := nodetest.StartCluster(t, 3)
	vars := map[string]string{"TALLY_SERVER": c.Follower().BaseURL(), "TALLY_ADMIN_TOKEN": c.AdminToken()}
	statusShows := func(want ...string) {
		t.Helper()
		nodetest.CheckFor(t, nodetest.Timeout, 50*time.Millisecond, func() error {
			code, out, errs := runCLI(t, vars, "admin", "cluster", "status")
			if code != 0 {
				return fmt.Errorf("status: %d %s", code, errs)
			}
			for _, w := range want {
				if !strings.Contains(out, w) {
					return fmt.Errorf("status lacks %q:\n%s", w, out)
				}
			}
			return nil
		})
	}
	statusShows("Cluster version: 2\n", "Features: ", " cluster_identity,", " cluster_version,")

	code, out, errs := runCLI(t, vars, "admin", "cluster", "downgrade", "--to", "1")
	if code != 0 || !strings.Contains(out, "hold") {
		t.Fatalf("downgrade: %d %s %s", code, out, errs)
	}
	statusShows("Cluster version: 1 (held by a downgrade", "Features: cluster_identity\n")
	if code, _, _ := runCLI(t, vars, "admin", "cluster", "downgrade", "--to", "9"); code == 0 {
		t.Fatal("downgrade to an unknown version succeeded")
	}
	if code, out, errs := runCLI(t, vars, "admin", "cluster", "downgrade", "--cancel"); code != 0 {
		t.Fatalf("downgrade --cancel: %d %s %s", code, out, errs)
	}
	statusShows("Cluster version: 2\n", "Features: ", " cluster_identity,", " cluster_version,")
}
