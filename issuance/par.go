package issuance

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Pushed authorization requests (RFC 9126).
//
// A client POSTs its authorization request to the PAR endpoint,
// authenticated like at the token endpoint (public clients by client_id).
// The request is checked as /authorize would check it and stored with a
// Raft write under the SHA-256 of a random request_uri, so it is known to
// every node; it lives PushedRequestTTL. At /authorize, client_id and
// request_uri redeem it with a second Raft write that deletes it, so a
// request_uri works once cluster-wide, only for the client that pushed it,
// and only until it expires. A tenant or a client can require PAR: then an
// authorization request that was not pushed is refused.

// PushedRequestTTL is the expires_in of a request_uri (RFC 9126 §2.2
// suggests 5 to 600 seconds).
const PushedRequestTTL = 60 * time.Second

// requestURIPrefix is the RFC 9126 §2.2 URN prefix of request_uri values.
const requestURIPrefix = "urn:ietf:params:oauth:request_uri:"

// PushedRequests stores pushed authorization requests. A Config.Grants
// that implements it enables PAR.
type PushedRequests interface {
	// PushRequest stores params under uriHash for clientID until expires.
	PushRequest(ctx context.Context, tenant string, uriHash []byte, clientID, params string, expires time.Time) error
	// RedeemRequest consumes the request once and returns its params. It
	// returns ErrNotFound when it was never pushed or is already used,
	// ErrExpiredToken when it expired, ErrGrantInvalid when another client
	// pushed it; anything else is a failure to decide.
	RedeemRequest(ctx context.Context, tenant string, uriHash []byte, clientID string) (string, error)
}

// pushedRequests is the PAR store, nil when PAR is off.
func (s *Server) pushedRequests() PushedRequests {
	p, _ := s.grantW.(PushedRequests)
	return p
}

type parResponse struct {
	RequestURI string `json:"request_uri"`
	ExpiresIn  int64  `json:"expires_in"`
}

// handlePAR is the pushed authorization request endpoint, RFC 9126 §2.
func (s *Server) handlePAR(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	resp, err := func() (*parResponse, error) {
		store := s.pushedRequests()
		t, err := s.tenant(ctx, r)
		if err != nil {
			return nil, err
		}
		if store == nil {
			return nil, newError(CodeInvalidRequest, http.StatusNotFound, "not found", nil)
		}
		form, err := readForm(r, s.cfg.MaxBodyBytes)
		if err != nil {
			return nil, err
		}
		cc, err := readClientCredentials(r.Header, form)
		if err != nil {
			return nil, err
		}
		now := s.cfg.Now()
		proof, err := s.checkDPoP(r, t.ID, now) // RFC 9449 §10.1: a proof at PAR binds the code
		if err != nil {
			return nil, err
		}
		c, err := s.authenticateFlowClient(ctx, t.ID, cc, now)
		if err != nil {
			return nil, err
		}
		if err := s.useDPoP(Client{}, proof, now); err != nil {
			return nil, err
		}
		// RFC 9126 §2.1: request_uri must not be pushed.
		if form.Has("request_uri") {
			return nil, errInvalidRequest("request_uri must not be pushed")
		}
		params := url.Values{}
		for _, k := range authzParams {
			if v, ok := form[k]; ok {
				params[k] = v
			}
		}
		params.Set(paramClientID, c.ID)
		if proof != nil {
			if j := params.Get("dpop_jkt"); j != "" && j != proof.JKT {
				return nil, errInvalidDPoP("dpop_jkt does not match the DPoP proof key", nil)
			}
			params.Set("dpop_jkt", proof.JKT)
		}
		if _, _, aerr := s.parseAuthorize(ctx, t, params); aerr != nil {
			code := aerr.code
			if code == "" {
				code = CodeInvalidRequest
			}
			return nil, newError(code, http.StatusBadRequest, parDescription(aerr.desc), nil)
		}
		raw, err := randomID(s.cfg.Rand)
		if err != nil {
			return nil, errUnavailable("randomness unavailable", err)
		}
		uri := requestURIPrefix + raw
		if err := store.PushRequest(ctx, t.ID, sha256Sum(uri), c.ID, params.Encode(), now.Add(PushedRequestTTL)); err != nil {
			return nil, errUnavailable("the request could not be stored now, retry", err)
		}
		return &parResponse{RequestURI: uri, ExpiresIn: int64(PushedRequestTTL / time.Second)}, nil
	}()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.respond(w, r, http.StatusCreated, resp, "no-store")
}

// parDescription makes an /authorize page message fit error_description
// (no quotes or backslashes; the messages never echo input).
func parDescription(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '"' || r == '\\' || r < 0x20 || r > 0x7e {
			return -1
		}
		return r
	}, s)
}

// resolvePushed replaces an authorization request that names a
// request_uri with the pushed request (RFC 9126 §4), consuming it, and
// refuses a request that was not pushed when the tenant or the client
// requires PAR (RFC 9126 §6). status and msg are an error page.
func (s *Server) resolvePushed(ctx context.Context, t Tenant, vals url.Values) (out url.Values, status int, msg string) {
	store := s.pushedRequests()
	uri := vals.Get("request_uri")
	if store == nil || len(vals["request_uri"]) != 1 {
		if store != nil && !vals.Has("request_uri") {
			if c, err := s.st.Client(ctx, t.ID, vals.Get(paramClientID)); (err == nil && c.RequirePAR) || t.RequirePAR {
				return nil, http.StatusBadRequest, "This client must push its authorization requests first (PAR)."
			}
		}
		return vals, 0, "" // parseAuthorize refuses what remains
	}
	clientID := vals.Get(paramClientID)
	if clientID == "" || len(vals[paramClientID]) != 1 || !strings.HasPrefix(uri, requestURIPrefix) || len(uri) > 256 {
		return nil, http.StatusBadRequest, "The request_uri is invalid, expired or already used."
	}
	params, err := store.RedeemRequest(ctx, t.ID, sha256Sum(uri), clientID)
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrExpiredToken), errors.Is(err, ErrGrantInvalid):
		return nil, http.StatusBadRequest, "The request_uri is invalid, expired or already used."
	case err != nil:
		return nil, http.StatusServiceUnavailable, "The request cannot be processed now. Try again."
	}
	pushed, err := url.ParseQuery(params)
	if err != nil || pushed.Get(paramClientID) != clientID {
		return nil, http.StatusBadRequest, "The request_uri is invalid, expired or already used."
	}
	// Only the pushed parameters count (RFC 9126 §4).
	return pushed, 0, ""
}

// parMetadata fills in the RFC 9126 §5 metadata.
func (s *Server) parMetadata(md *metadata, t Tenant) {
	if s.pushedRequests() == nil {
		return
	}
	md.PushedAuthorizationRequestEndpoint = s.Issuer(t.ID) + "/oauth2/par"
	md.RequirePushedAuthorizationRequests = t.RequirePAR
}
