package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"golang.org/x/time/rate"
)

// maxDocBytes bounds discovery, JWKS and introspection responses.
const maxDocBytes = 1 << 20

// keyCache holds an issuer's JWKS, found through RFC 8414 discovery. It
// refreshes when the cached set's max-age passed, and at most at the
// limiter's rate when a token names a kid it does not know. Safe for
// concurrent use.
type keyCache struct {
	issuer string
	client *http.Client
	now    func() time.Time
	limit  *rate.Limiter
	maxAge time.Duration // when the response names none

	// keepOnGone: a watcher's cache, which verifies a deleted tenant's
	// last SETs with the keys it cached before the issuer forgot them.
	keepOnGone bool

	mu       sync.RWMutex
	fetchMu  sync.Mutex
	jwksURI  string
	introURI string
	keys     map[string]jose.JSONWebKey
	expires  time.Time
	// gone: the last fetch found the tenant unknown to its issuer
	// (metadata or JWKS 404): errTenantDeleted until a fetch succeeds.
	gone bool
}

// errTenantDeleted: the token's tenant was deleted (a tenant-deleted
// event), or its issuer answers 404 for its metadata, JWKS or
// introspection (deleted, or never created). ReasonTenantDeleted.
var errTenantDeleted = errors.New("tenant deleted")

func newKeyCache(issuer string, client *http.Client, now func() time.Time, refetch time.Duration) *keyCache {
	return &keyCache{
		issuer: issuer, client: client, now: now,
		limit:  rate.NewLimiter(rate.Every(refetch), 1),
		maxAge: 5 * time.Minute,
	}
}

// discoveryURL is the RFC 8414 §3.1 metadata URL of the issuer: the
// well-known path goes between the host and the issuer's path.
func discoveryURL(issuer string) (string, error) {
	u, _, err := MetadataURLs(issuer)
	return u, err
}

func (k *keyCache) getJSON(ctx context.Context, uri string, v any) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("GET %s: %s: %w", uri, resp.Status, errTenantDeleted)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", uri, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxDocBytes {
		return nil, fmt.Errorf("GET %s: response too large", uri)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return nil, fmt.Errorf("GET %s: %w", uri, err)
	}
	return resp.Header, nil
}

// discover reads the issuer's metadata once.
func (k *keyCache) discover(ctx context.Context) (jwks, intro string, err error) {
	k.mu.Lock()
	jwks, intro = k.jwksURI, k.introURI
	k.mu.Unlock()
	if jwks != "" {
		return jwks, intro, nil
	}
	meta, err := Discover(ctx, k.client, k.issuer, func(md Metadata) error {
		if md.JWKSURI == "" {
			return errors.New("no jwks_uri")
		}
		return nil
	})
	if err != nil {
		return "", "", fmt.Errorf("revocation: discovery: %w", err)
	}
	k.mu.Lock()
	k.jwksURI, k.introURI = meta.JWKSURI, meta.IntrospectionEndpoint
	k.mu.Unlock()
	return meta.JWKSURI, meta.IntrospectionEndpoint, nil
}

// key returns the public key kid. force refreshes even a fresh cache,
// subject to the rate limit (used when kid is unknown).
func (k *keyCache) key(ctx context.Context, kid string) (jose.JSONWebKey, error) {
	k.mu.RLock()
	jwk, ok := k.keys[kid]
	fresh := k.keys != nil && k.now().Before(k.expires)
	gone := k.gone
	k.mu.RUnlock()
	if ok && fresh {
		return jwk, nil
	}
	if fresh && !k.limit.Allow() {
		if gone {
			return jose.JSONWebKey{}, fmt.Errorf("%w: its issuer answered 404", errTenantDeleted)
		}
		return jose.JSONWebKey{}, errUnknownKid
	}
	if err := k.refresh(ctx, fresh); err != nil {
		// A stale key beats none while the issuer is unreachable, but
		// not once it says the tenant is gone (except for a watcher's
		// last SETs of the tenant).
		if ok && (k.keepOnGone || !errors.Is(err, errTenantDeleted)) {
			return jwk, nil
		}
		return jose.JSONWebKey{}, err
	}
	k.mu.Lock()
	jwk, ok = k.keys[kid]
	k.mu.Unlock()
	if !ok {
		return jose.JSONWebKey{}, errUnknownKid
	}
	return jwk, nil
}

// markGone records that the issuer does not know the tenant: a Verifier's
// cache forgets its keys (its tokens are rejected, errTenantDeleted, with
// refetches at most at the limiter's rate); a watcher's keeps them.
func (k *keyCache) markGone() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.gone = true
	if !k.keepOnGone || k.keys == nil {
		k.keys = map[string]jose.JSONWebKey{}
	}
	k.expires = k.now().Add(k.maxAge)
}

var errUnknownKid = errors.New("revocation: unknown kid")

// invalidate makes the next lookup refetch the JWKS (a key was rotated).
func (k *keyCache) invalidate() {
	k.mu.Lock()
	k.expires = time.Time{}
	k.mu.Unlock()
}

// refresh fetches the JWKS. Without force it does nothing if another
// caller refreshed it meanwhile.
func (k *keyCache) refresh(ctx context.Context, force bool) error {
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	k.mu.Lock()
	fresh := k.keys != nil && k.now().Before(k.expires)
	k.mu.Unlock()
	if fresh && !force {
		return nil
	}
	uri, _, err := k.discover(ctx)
	if err != nil {
		if errors.Is(err, errTenantDeleted) {
			k.markGone()
		}
		return err
	}
	var set jose.JSONWebKeySet
	h, err := k.getJSON(ctx, uri, &set)
	if err != nil {
		if errors.Is(err, errTenantDeleted) {
			k.markGone()
		}
		return fmt.Errorf("revocation: jwks: %w", err)
	}
	keys := make(map[string]jose.JSONWebKey, len(set.Keys))
	for _, jwk := range set.Keys {
		if jwk.KeyID == "" || !jwk.IsPublic() || (jwk.Use != "" && jwk.Use != "sig") {
			continue
		}
		keys[jwk.KeyID] = jwk
	}
	k.mu.Lock()
	k.keys, k.gone = keys, false
	k.expires = k.now().Add(maxAge(h.Get("Cache-Control"), k.maxAge))
	k.mu.Unlock()
	return nil
}

// maxAge reads max-age from Cache-Control (RFC 9111 §5.2.2.1); no-store or
// no-cache mean 0; absent means def. It is capped at a day.
func maxAge(cc string, def time.Duration) time.Duration {
	for _, d := range strings.Split(cc, ",") {
		d = strings.ToLower(strings.TrimSpace(d))
		if d == "no-store" || d == "no-cache" {
			return 0
		}
		if v, ok := strings.CutPrefix(d, "max-age="); ok {
			n, err := strconv.Atoi(strings.Trim(v, `"`))
			if err != nil || n < 0 {
				return def
			}
			return min(time.Duration(n)*time.Second, 24*time.Hour)
		}
	}
	return def
}
