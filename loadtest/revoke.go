package loadtest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/revocation"
)

// RevokePropagationConfig configures RunRevokePropagation: revocations made
// through the admin API of a node, observed by the resource-server SDK.
type RevokePropagationConfig struct {
	Admin  adminv1connect.AdminServiceClient
	Tenant string
	// Watcher is a started, synced SDK watcher of the tenant.
	Watcher *revocation.Watcher
	// Revocations to make, one at a time (default 10,000).
	Revocations int
	// Timeout bounds the wait for one revocation to arrive; default 10s.
	Timeout time.Duration
	// Progress, if set, is called every 1,000 revocations.
	Progress func(done int)
}

// RevokeReport is the propagation latency: from the moment the admin call
// returned (the revocation is committed and applied on the node) to the
// moment the SDK's revocation set has it. An event that reached the SDK
// before the caller read the acknowledgement counts as 0.
type RevokeReport struct {
	Revocations int           `json:"revocations"`
	P50         time.Duration `json:"p50"`
	P90         time.Duration `json:"p90"`
	P99         time.Duration `json:"p99"`
	P999        time.Duration `json:"p999"`
	Max         time.Duration `json:"max"`
	Mean        time.Duration `json:"mean"`
	// BeforeAck counts events the SDK applied before the acknowledgement.
	BeforeAck int `json:"before_ack"`
	// FromCallP50 and FromCallP99 measure from the start of the admin call
	// instead (write latency plus propagation).
	FromCallP50 time.Duration `json:"from_call_p50"`
	FromCallP99 time.Duration `json:"from_call_p99"`
	Elapsed     time.Duration `json:"elapsed"`
}

// RunRevokePropagation revokes cfg.Revocations token ids one after another
// and records each one's propagation latency in an HdrHistogram (µs).
func RunRevokePropagation(ctx context.Context, cfg RevokePropagationConfig) (RevokeReport, error) {
	if cfg.Admin == nil || cfg.Watcher == nil || cfg.Tenant == "" {
		return RevokeReport{}, errors.New("loadtest: revoke propagation needs Admin, Watcher and Tenant")
	}
	if cfg.Revocations <= 0 {
		cfg.Revocations = 10000
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	run := fmt.Sprintf("lt-%d", time.Now().UnixNano())

	var mu sync.Mutex
	arrived := map[string]time.Time{}
	waiting := map[string]chan struct{}{}
	cfg.Watcher.OnEvent(func(typ string, d revocation.EventDetails) {
		if typ != revocation.EventTokenRevoked {
			return
		}
		now := time.Now()
		mu.Lock()
		arrived[d.JTI] = now
		if ch, ok := waiting[d.JTI]; ok {
			close(ch)
			delete(waiting, d.JTI)
		}
		mu.Unlock()
	})

	h := hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
	hc := hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
	rep := RevokeReport{Revocations: cfg.Revocations}
	start := time.Now()
	exp := timestamppb.New(time.Now().Add(2 * time.Hour))
	for i := range cfg.Revocations {
		jti := fmt.Sprintf("%s-%d", run, i)
		ch := make(chan struct{})
		mu.Lock()
		waiting[jti] = ch
		mu.Unlock()
		called := time.Now()
		_, err := cfg.Admin.RevokeToken(ctx, connect.NewRequest(&adminv1.RevokeTokenRequest{
			Tenant: cfg.Tenant, Jti: jti, ExpiresAt: exp, Reason: "loadtest",
		}))
		acked := time.Now()
		if err != nil {
			return rep, fmt.Errorf("loadtest: revoke %s: %w", jti, err)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-time.After(cfg.Timeout):
			return rep, fmt.Errorf("loadtest: revocation %s did not reach the SDK within %s", jti, cfg.Timeout)
		}
		mu.Lock()
		at := arrived[jti]
		delete(arrived, jti)
		mu.Unlock()
		lat := at.Sub(acked)
		if lat < 0 {
			lat = 0
			rep.BeforeAck++
		}
		_ = h.RecordValue(max(int64(lat/time.Microsecond), 1))
		_ = hc.RecordValue(max(int64(at.Sub(called)/time.Microsecond), 1))
		if cfg.Progress != nil && (i+1)%1000 == 0 {
			cfg.Progress(i + 1)
		}
	}
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	rep.Elapsed = time.Since(start)
	rep.P50, rep.P90, rep.P99, rep.P999 = us(h.ValueAtQuantile(50)), us(h.ValueAtQuantile(90)), us(h.ValueAtQuantile(99)), us(h.ValueAtQuantile(99.9))
	rep.Max, rep.Mean = us(h.Max()), time.Duration(h.Mean()*float64(time.Microsecond))
	rep.FromCallP50, rep.FromCallP99 = us(hc.ValueAtQuantile(50)), us(hc.ValueAtQuantile(99))
	return rep, nil
}

// VerifyReport compares the SDK's local verification with a bare
// golang-jwt verification of the same token and key, in the same run.
type VerifyReport struct {
	Workers    int           `json:"workers"`
	Duration   time.Duration `json:"duration"`
	SDKOps     float64       `json:"sdk_ops_per_s"`
	BareOps    float64       `json:"bare_ops_per_s"`
	Ratio      float64       `json:"ratio"`
	Alg        string        `json:"alg"`
	RevokedSet int           `json:"revoked_set_size"`
}

// RunVerifyCompare verifies token with v, then with bare golang-jwt
// (signature, exp and issuer into jwt.RegisteredClaims; no typ, aud or
// revocation check) against the key from jwks,
// for d each (alternating halves) with GOMAXPROCS workers, and reports
// ops/s of both.
func RunVerifyCompare(ctx context.Context, v *revocation.Verifier, jwks jose.JSONWebKeySet, issuer, token string, d time.Duration) (VerifyReport, error) {
	if _, err := v.Verify(ctx, token); err != nil {
		return VerifyReport{}, fmt.Errorf("loadtest: the SDK rejects the token: %w", err)
	}
	parsed, _, err := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{})
	if err != nil {
		return VerifyReport{}, err
	}
	kid, _ := parsed.Header["kid"].(string)
	keys := jwks.Key(kid)
	if len(keys) != 1 {
		return VerifyReport{}, fmt.Errorf("loadtest: kid %q not in the JWKS", kid)
	}
	key := keys[0].Key
	alg := parsed.Method.Alg()
	bare := func() error {
		_, err := jwt.ParseWithClaims(token, &jwt.RegisteredClaims{}, func(*jwt.Token) (any, error) { return key, nil },
			jwt.WithValidMethods([]string{alg}), jwt.WithIssuer(issuer), jwt.WithExpirationRequired())
		return err
	}
	if err := bare(); err != nil {
		return VerifyReport{}, fmt.Errorf("loadtest: bare verification fails: %w", err)
	}
	workers := runtime.GOMAXPROCS(0)
	measure := func(fn func() error) (float64, error) {
		var ops atomic.Int64
		var firstErr atomic.Value
		stop := time.Now().Add(d)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for time.Now().Before(stop) && ctx.Err() == nil {
					for range 64 {
						if err := fn(); err != nil {
							firstErr.CompareAndSwap(nil, err)
							return
						}
					}
					ops.Add(64)
				}
			})
		}
		wg.Wait()
		if e, _ := firstErr.Load().(error); e != nil {
			return 0, e
		}
		return float64(ops.Load()) / d.Seconds(), nil
	}
	// Alternate two rounds of each, d/2 long, so that a change in the
	// machine's load hits both sides alike.
	d /= 2
	var sdk, b float64
	for range 2 {
		s, err := measure(func() error { _, err := v.Verify(ctx, token); return err })
		if err != nil {
			return VerifyReport{}, err
		}
		r, err := measure(bare)
		if err != nil {
			return VerifyReport{}, err
		}
		sdk, b = sdk+s/2, b+r/2
	}
	return VerifyReport{Workers: workers, Duration: 2 * d, SDKOps: sdk, BareOps: b, Ratio: sdk / b, Alg: alg}, nil
}
