package main

// tally admin cluster downgrade, and the cluster version lines of tally
// admin cluster status (issue 15; node/version.go).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
)

// writeClusterVersion prints the recorded cluster version under the status
// table.
func writeClusterVersion(w io.Writer, st *clusterv1.StatusResponse) error {
	v := st.GetClusterVersion()
	if v == nil {
		_, err := fmt.Fprintln(w, "\nCluster version: none recorded (a member runs v0.1.0, or is unreachable, or the leader has not recorded it yet)")
		return err
	}
	hold := ""
	if v.Hold {
		hold = " (held by a downgrade: `tally admin cluster downgrade --cancel` lets the leader raise it)"
	}
	_, err := fmt.Fprintf(w, "\nCluster version: %d%s\nFeatures: %s\n", v.Version, hold, strings.Join(v.Features, ", "))
	return err
}

func versionCommands() []adminCommand {
	return []adminCommand{{
		path:     "cluster downgrade",
		synopsis: "[--to VERSION] [--cancel] [--wait DURATION]",
		summary:  "Lower and hold the cluster version before rolling an older release in (or --cancel the hold).",
		detail: "Records cluster version VERSION (default 1, v0.1.0) with that release's features and holds\n" +
			"it: proposers stop using newer operations and the leader does not raise the version again.\n" +
			"It then waits until every member has applied the change; only then replace nodes with the\n" +
			"older binary, one at a time (deploy/runbooks/rolling-upgrade.md). --cancel clears the hold\n" +
			"so that the leader records the version every member supports again.",
		examples: []string{`tally admin cluster downgrade --to 1`, `tally admin cluster downgrade --cancel`},
		setup: func(fs *flag.FlagSet) adminAction {
			to := fs.Uint("to", 1, "cluster `VERSION` to lower to")
			cancel := fs.Bool("cancel", false, "clear a downgrade hold instead")
			wait := fs.Duration("wait", 60*time.Second, "how long to wait until every member has applied it (0: do not wait)")
			return func(ctx context.Context, s *adminSession, args []string) error {
				if err := noArgs(args); err != nil {
					return err
				}
				api, err := s.clusterClient()
				if err != nil {
					return err
				}
				res, err := api.Downgrade(ctx, connect.NewRequest(&clusterv1.DowngradeRequest{Version: uint32(*to), Cancel: *cancel}))
				if err != nil {
					return err
				}
				if *wait > 0 {
					if err := waitApplied(ctx, api, res.Msg.Index, *wait); err != nil {
						return err
					}
				}
				v := res.Msg.GetClusterVersion()
				return s.printOne(res.Msg, []field{
					{"cluster_version", strconv.FormatUint(uint64(v.GetVersion()), 10)},
					{"features", strings.Join(v.GetFeatures(), ",")},
					{"hold", textBool(v.GetHold())},
					{"index", strconv.FormatUint(res.Msg.Index, 10)},
				})
			}
		},
	}}
}

// waitApplied polls the cluster status until every member has applied
// index.
func waitApplied(ctx context.Context, api interface {
	Status(context.Context, *connect.Request[clusterv1.StatusRequest]) (*connect.Response[clusterv1.StatusResponse], error)
}, index uint64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		st, err := api.Status(ctx, connect.NewRequest(&clusterv1.StatusRequest{}))
		if err == nil {
			last = ""
			for _, m := range st.Msg.Members {
				if m.AppliedIndex < index {
					last = fmt.Sprintf("%s has applied %d of %d", m.Id, m.AppliedIndex, index)
					break
				}
			}
			if last == "" {
				return nil
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return errors.New("not every member applied the change in time (" + last + "); do not replace nodes yet")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
