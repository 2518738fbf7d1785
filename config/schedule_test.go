package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestScheduleAcrossDST(t *testing.T) {
	berlin, _ := time.LoadLocation("Europe/Berlin")
	ny, _ := time.LoadLocation("America/New_York")
	for _, tc := range []struct {
		spec  string
		loc   *time.Location
		from  time.Time
		fires int
		want  []string // RFC 3339 instants
	}{
		{"30 2 * * *", berlin, time.Date(2026, 3, 28, 12, 0, 0, 0, berlin), 3,
			[]string{"2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"}},
		{"30 2 * * *", berlin, time.Date(2026, 10, 24, 12, 0, 0, 0, berlin), 3,
			[]string{"2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"}},
		{"*/30 * * * *", berlin, time.Date(2026, 3, 29, 1, 15, 0, 0, berlin), 4,
			[]string{"2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00", "2026-03-29T04:00:00+02:00"}},
		{"*/30 * * * *", berlin, time.Date(2026, 10, 25, 1, 45, 0, 0, berlin), 4,
			[]string{"2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T03:00:00+01:00", "2026-10-25T03:30:00+01:00"}},
		{"0 2 * * *", ny, time.Date(2026, 3, 7, 12, 0, 0, 0, ny), 2,
			[]string{"2026-03-08T03:00:00-04:00", "2026-03-09T02:00:00-04:00"}},
		{"0 1 * * *", ny, time.Date(2026, 10, 31, 12, 0, 0, 0, ny), 2,
			[]string{"2026-11-01T01:00:00-04:00", "2026-11-02T01:00:00-05:00"}},
		{"0 2 * * *", time.UTC, time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC), 2,
			[]string{"2026-03-29T02:00:00Z", "2026-03-30T02:00:00Z"}},
		{"*/15 2 29 3 *", berlin, time.Date(2026, 3, 29, 0, 0, 0, 0, berlin), 2, // four slots in the gap: one run
			[]string{"2026-03-29T03:00:00+02:00", "2027-03-29T02:00:00+02:00"}},
	} {
		t.Run(fmt.Sprintf("%s %s %s", tc.spec, tc.loc, tc.from.Format(time.DateOnly)), func(t *testing.T) {
			sched, err := cronParser.Parse(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			s := dstSafe(sched)
			var got []string
			for x := tc.from; len(got) < tc.fires; {
				x = s.Next(x)
				got = append(got, x.Format(time.RFC3339))
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("fires\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}
