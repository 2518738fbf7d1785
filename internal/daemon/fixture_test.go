package daemon_test

import (
	"os"
	"testing"

	"github.com/sellersnap/sellersnap/internal/daemon"
	"github.com/sellersnap/sellersnap/internal/pgtest"
	"github.com/sellersnap/sellersnap/internal/pipelinetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// fixture is pipelinetest's, with the daemons a test started.
type fixture struct {
	*pipelinetest.Fixture
	daemons []*daemon.Daemon // started by f.daemon, in order
}

func newFixture(t *testing.T, extraYAML string) *fixture {
	t.Helper()
	return &fixture{Fixture: pipelinetest.New(t, extraYAML)}
}
