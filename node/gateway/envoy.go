package gateway

import (
	"context"
	"crypto/x509"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"

	"github.com/tallyauth/tally/issuance"
)

// ExtAuthzProcedure is Envoy's external authorization RPC.
const ExtAuthzProcedure = "/envoy.service.auth.v3.Authorization/Check"

// ExtAuthzHandler serves Envoy's ext_authz gRPC API
// (envoy.service.auth.v3.Authorization/Check) through Connect's gRPC
// support, with the same decisions as the forward-auth endpoint. The
// tenant is the context extension "tenant" of the Envoy route
// (check_settings.context_extensions), else defaultTenant. The client IP
// is Envoy's view of the downstream peer; so is the client certificate
// (source.certificate, URL-encoded PEM, when Envoy terminates mTLS), which
// certificate-bound tokens are checked against; a DPoP proof is the
// request's dpop header, checked against its method, scheme, host and
// path. Denials carry the status and
// WWW-Authenticate for Envoy to send; allowed requests get the identity
// headers (and the phantom JWT as Authorization) added upstream.
func ExtAuthzHandler(c *Checker, defaultTenant string) (string, http.Handler) {
	h := connect.NewUnaryHandler(ExtAuthzProcedure, func(ctx context.Context, req *connect.Request[authv3.CheckRequest]) (*connect.Response[authv3.CheckResponse], error) {
		return connect.NewResponse(c.CheckEnvoy(ctx, req.Msg, defaultTenant)), nil
	}, connect.WithReadMaxBytes(1<<20))
	return ExtAuthzProcedure, h
}

// CheckEnvoy decides an ext_authz CheckRequest.
func (c *Checker) CheckEnvoy(ctx context.Context, in *authv3.CheckRequest, defaultTenant string) *authv3.CheckResponse {
	attrs := in.GetAttributes()
	hr := attrs.GetRequest().GetHttp()
	tenant := attrs.GetContextExtensions()["tenant"]
	if tenant == "" {
		tenant = defaultTenant
	}
	headers := hr.GetHeaders() // lower-case keys
	var device map[string]string
	for k, v := range headers {
		if rest, ok := strings.CutPrefix(k, "x-device-"); ok && len(device) < 16 {
			if device == nil {
				device = map[string]string{}
			}
			device[rest] = v
		}
	}
	uri := hr.GetPath()
	if uri == "" {
		uri = "/"
	}
	var proofs []string
	if v := headers["dpop"]; v != "" {
		proofs = strings.Split(v, ",") // Envoy joins repeated headers with commas; a proof has none
	}
	var cert *x509.Certificate
	if pem := attrs.GetSource().GetCertificate(); pem != "" {
		if certs, err := issuance.ParseClientCertHeader(pem); err == nil {
			cert = certs[0]
		}
	}
	var reqURL string
	if hr.GetScheme() != "" && hr.GetHost() != "" && strings.HasPrefix(uri, "/") {
		reqURL = hr.GetScheme() + "://" + hr.GetHost() + uri
	}
	d := c.Check(ctx, Request{
		Tenant: tenant, Method: strings.ToUpper(hr.GetMethod()), URI: uri, Authorization: headers["authorization"],
		ClientIP: attrs.GetSource().GetAddress().GetSocketAddress().GetAddress(), Device: device,
		DPoP: proofs, URL: reqURL, ClientCert: cert,
	})
	var opts []*corev3.HeaderValueOption
	for k, vs := range d.Headers {
		for _, v := range vs {
			opts = append(opts, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: strings.ToLower(k), Value: v},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
		}
	}
	if d.Status == http.StatusOK {
		return &authv3.CheckResponse{
			Status:       &status.Status{Code: int32(code.Code_OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{Headers: opts}},
		}
	}
	grpcCode := code.Code_PERMISSION_DENIED
	switch d.Status {
	case http.StatusUnauthorized:
		grpcCode = code.Code_UNAUTHENTICATED
	case http.StatusTooManyRequests:
		grpcCode = code.Code_RESOURCE_EXHAUSTED
	case http.StatusServiceUnavailable:
		grpcCode = code.Code_UNAVAILABLE
	}
	return &authv3.CheckResponse{
		Status: &status.Status{Code: int32(grpcCode), Message: d.Reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(d.Status)}, Headers: opts, Body: d.Reason + "\n",
		}},
	}
}
