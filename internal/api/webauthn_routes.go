package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/wardhq/ward/internal/access"
)

// WebAuthn routes. The four ceremony steps are public() in huma's sense:
// they authenticate the session cookie themselves (access.WebAuthn checks
// it and its X-CSRF-Token), because a session that is still waiting for its
// second factor must reach them and the API's middleware admits only live
// sessions. Listing and deleting one's keys need a live session.

// The session cookie and CSRF header are repeated in each input rather than
// embedded: huma looks for parameters only in exported fields.

type webauthnCeremonyInput struct {
	requestMeta
	Session string `cookie:"ward_session" doc:"The session cookie, live or waiting for its second factor"`
	CSRF    string `header:"X-CSRF-Token" doc:"The session's CSRF token, as the login answer gave it"`
}

func (in *webauthnCeremonyInput) request() access.CeremonyRequest {
	return access.CeremonyRequest{Cookie: in.Session, CSRF: in.CSRF, Source: in.remote}
}

type webauthnBeginRegisterInput struct {
	requestMeta
	Session string `cookie:"ward_session" doc:"The session cookie, live or waiting for its second factor"`
	CSRF    string `header:"X-CSRF-Token" doc:"The session's CSRF token, as the login answer gave it"`
	Body    *struct {
		Name string `json:"name,omitempty" maxLength:"64" doc:"A name for the key, e.g. \"YubiKey on my badge\""`
	}
}

func (in *webauthnBeginRegisterInput) request() access.CeremonyRequest {
	return access.CeremonyRequest{Cookie: in.Session, CSRF: in.CSRF, Source: in.remote}
}

type webauthnFinishInput struct {
	requestMeta
	Session string          `cookie:"ward_session" doc:"The session cookie, live or waiting for its second factor"`
	CSRF    string          `header:"X-CSRF-Token" doc:"The session's CSRF token, as the login answer gave it"`
	Body    json.RawMessage `required:"true" doc:"The PublicKeyCredential the browser returned, as JSON (PublicKeyCredential.toJSON())"`
}

func (in *webauthnFinishInput) request() access.CeremonyRequest {
	return access.CeremonyRequest{Cookie: in.Session, CSRF: in.CSRF, Source: in.remote}
}

type webauthnOptionsOutput struct {
	Body json.RawMessage `doc:"{\"publicKey\": …}: options for navigator.credentials.create or .get"`
}

type webauthnCredentialOutput struct {
	Body access.WebAuthnCredential
}

type webauthnCredentialList struct {
	Body struct {
		Items []access.WebAuthnCredential `json:"items"`
	}
}

type webauthnCredentialRef struct {
	requestMeta
	ID string `path:"id" maxLength:"1400" doc:"Credential id, unpadded base64url"`
}

func (s *server) webauthn() (*access.WebAuthn, error) {
	if s.cfg.WebAuthn == nil || s.cfg.SessionStore == nil {
		return nil, fmt.Errorf("%w: security keys are not configured on this server (webauthn.rp_id, webauthn.origins)", access.ErrUnavailable)
	}
	return s.cfg.WebAuthn, nil
}

func (s *server) webauthnRoutes() {
	tags := []string{"session"}
	register(s, huma.Operation{
		OperationID: "webauthn-register-begin", Metadata: public(), Security: []map[string][]string{}, Method: http.MethodPost, Path: Prefix + "/session/webauthn/register/begin",
		Summary:     "Start registering a security key or passkey",
		Description: "Needs a live session, or one waiting to enroll its first second factor. Answer the returned options with navigator.credentials.create within 5 minutes.",
		Tags:        tags,
	}, func(ctx context.Context, in *webauthnBeginRegisterInput) (*webauthnOptionsOutput, error) {
		wa, err := s.webauthn()
		if err != nil {
			return nil, err
		}
		var name string
		if in.Body != nil {
			name = in.Body.Name
		}
		opts, err := wa.BeginRegistration(ctx, in.request(), name)
		if err != nil {
			return nil, err
		}
		return &webauthnOptionsOutput{Body: opts}, nil
	})
	register(s, huma.Operation{
		OperationID: "webauthn-register-finish", Metadata: public(), Security: []map[string][]string{}, Method: http.MethodPost, Path: Prefix + "/session/webauthn/register/finish", DefaultStatus: http.StatusCreated,
		Summary:     "Finish registering a security key or passkey",
		Description: "A session that was waiting to enroll its second factor has it afterwards.",
		Tags:        tags,
	}, func(ctx context.Context, in *webauthnFinishInput) (*webauthnCredentialOutput, error) {
		wa, err := s.webauthn()
		if err != nil {
			return nil, err
		}
		c, err := wa.FinishRegistration(ctx, in.request(), in.Body)
		if err != nil {
			return nil, err
		}
		return &webauthnCredentialOutput{Body: c}, nil
	})
	register(s, huma.Operation{
		OperationID: "webauthn-login-begin", Metadata: public(), Security: []map[string][]string{}, Method: http.MethodPost, Path: Prefix + "/session/webauthn/login/begin",
		Summary:     "Start the security-key step of a login",
		Description: "Needs a session waiting for its second factor. Answer the returned options with navigator.credentials.get within 5 minutes.",
		Tags:        tags,
	}, func(ctx context.Context, in *webauthnCeremonyInput) (*webauthnOptionsOutput, error) {
		wa, err := s.webauthn()
		if err != nil {
			return nil, err
		}
		opts, err := wa.BeginLogin(ctx, in.request())
		if err != nil {
			return nil, err
		}
		return &webauthnOptionsOutput{Body: opts}, nil
	})
	register(s, huma.Operation{
		OperationID: "webauthn-login-finish", Metadata: public(), Security: []map[string][]string{}, Method: http.MethodPost, Path: Prefix + "/session/webauthn/login/finish",
		Summary: "Finish the security-key step of a login; the session is then live", Tags: tags,
	}, func(ctx context.Context, in *webauthnFinishInput) (*sessionOutput, error) {
		wa, err := s.webauthn()
		if err != nil {
			return nil, err
		}
		if _, err := wa.FinishLogin(ctx, in.request(), in.Body); err != nil {
			return nil, err
		}
		sess, u, err := s.cfg.SessionStore.Get(ctx, in.Session)
		if err != nil {
			return nil, err
		}
		return &sessionOutput{Body: sessionView(sess, u)}, nil
	})
	register(s, huma.Operation{
		OperationID: "list-my-credentials", Metadata: perm(access.SelfService), Method: http.MethodGet, Path: Prefix + "/me/credentials",
		Summary: "List my security keys and passkeys", Tags: []string{"me"},
	}, func(ctx context.Context, _ *struct{}) (*webauthnCredentialList, error) {
		wa, err := s.webauthn()
		if err != nil {
			return nil, err
		}
		p, err := webauthnPerson(ctx)
		if err != nil {
			return nil, err
		}
		cs, err := wa.Credentials(ctx, p.ID)
		if err != nil {
			return nil, err
		}
		out := &webauthnCredentialList{}
		out.Body.Items = cs
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "delete-my-credential", Metadata: perm(access.SelfService), Method: http.MethodDelete, Path: Prefix + "/me/credentials/{id}", DefaultStatus: http.StatusNoContent,
		Summary:     "Remove one of my security keys or passkeys",
		Description: "The last second factor of an account whose roles need one cannot be removed.",
		Tags:        []string{"me"},
	}, func(ctx context.Context, in *webauthnCredentialRef) (*struct{}, error) {
		wa, err := s.webauthn()
		if err != nil {
			return nil, err
		}
		p, err := webauthnPerson(ctx)
		if err != nil {
			return nil, err
		}
		if err := wa.DeleteCredential(ctx, p.ID, in.ID, in.remote); err != nil {
			return nil, err
		}
		return nil, nil
	})
}

// webauthnPerson is the caller if it is a person: tokens have no keys.
func webauthnPerson(ctx context.Context) (access.Principal, error) {
	p := caller(ctx)
	if p.Kind != access.KindUser {
		return access.Principal{}, fmt.Errorf("%w: %s is not a person; only people have security keys", access.ErrForbidden, p.Actor())
	}
	return p, nil
}
