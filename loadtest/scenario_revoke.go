package loadtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/revocation"
)

// ScenarioRevokePropagation is the Report.Scenario of
// RevokePropagationScenario.
const ScenarioRevokePropagation = "revoke-propagation"

// OutcomeNotDelivered is a revocation that the admin API acknowledged but
// that did not reach the SDK's revocation set within the timeout.
const OutcomeNotDelivered = "not_delivered"

// RevokePropagationScenario revokes token ids through the admin API and
// waits, per iteration, until the resource-server SDK (a
// revocation.Watcher) has the revocation: an iteration's latency is the
// write (quorum commit, local apply) plus the delivery over the event log.
// Its virtual clients revoke concurrently; each id is new, so nothing
// conflicts. Close stops the watcher.
type RevokePropagationScenario struct {
	admin   adminv1connect.AdminServiceClient
	tenant  string
	w       *revocation.Watcher
	timeout time.Duration
	run     string

	mu      sync.Mutex
	waiting map[string]chan struct{}
}

// NewRevokePropagationScenario makes a watcher from wc, registers the
// scenario's hook, starts it and waits until it has synced (or ctx ends).
// Revocations go through admin in tenant; timeout bounds one iteration.
func NewRevokePropagationScenario(ctx context.Context, admin adminv1connect.AdminServiceClient, tenant string, wc revocation.WatcherConfig, timeout time.Duration) (*RevokePropagationScenario, error) {
	if admin == nil || tenant == "" {
		return nil, errors.New("loadtest: revoke-propagation needs the admin API and a tenant")
	}
	if timeout <= 0 {
		return nil, errors.New("loadtest: timeout must be positive")
	}
	w, err := revocation.NewWatcher(wc)
	if err != nil {
		return nil, err
	}
	s := &RevokePropagationScenario{admin: admin, tenant: tenant, w: w, timeout: timeout,
		run: "lt-" + strings.ToLower(rand.Text()[:10]), waiting: map[string]chan struct{}{}}
	w.OnEvent(func(typ string, d revocation.EventDetails) {
		if typ != revocation.EventTokenRevoked {
			return
		}
		s.mu.Lock()
		if ch, ok := s.waiting[d.JTI]; ok {
			close(ch)
			delete(s.waiting, d.JTI)
		}
		s.mu.Unlock()
	})
	w.Start()
	if err := w.WaitSynced(ctx); err != nil {
		w.Stop()
		return nil, fmt.Errorf("loadtest: the SDK did not sync: %w", err)
	}
	return s, nil
}

// Name is ScenarioRevokePropagation.
func (s *RevokePropagationScenario) Name() string { return ScenarioRevokePropagation }

// Close stops the watcher.
func (s *RevokePropagationScenario) Close() { s.w.Stop() }

// NewOp returns virtual client i.
func (s *RevokePropagationScenario) NewOp(_ context.Context, i int) (Op, error) {
	return &revokeOp{s: s, prefix: fmt.Sprintf("%s-%d-", s.run, i)}, nil
}

type revokeOp struct {
	s      *RevokePropagationScenario
	prefix string
	k      int
}

func (o *revokeOp) Do(ctx context.Context) (Outcome, bool) {
	s := o.s
	jti := o.prefix + fmt.Sprint(o.k)
	o.k++
	ch := make(chan struct{})
	s.mu.Lock()
	s.waiting[jti] = ch
	s.mu.Unlock()
	forget := func() {
		s.mu.Lock()
		delete(s.waiting, jti)
		s.mu.Unlock()
	}
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_, err := s.admin.RevokeToken(cctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
		Tenant: s.tenant, Jti: jti, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)), Reason: "loadtest",
	}))
	if err != nil {
		forget()
		if ctx.Err() != nil {
			return Outcome{}, false
		}
		return Outcome{Code: strings.ReplaceAll(connect.CodeOf(err).String(), " ", "_")}, true
	}
	select {
	case <-ch:
		return Outcome{Code: OutcomeOK}, true
	case <-cctx.Done():
		forget()
		if ctx.Err() != nil {
			return Outcome{}, false
		}
		return Outcome{Code: OutcomeNotDelivered}, true
	}
}
