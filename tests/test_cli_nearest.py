import json

import pytest
from click.testing import CliRunner

from wakemodel.cli import main


@pytest.fixture
def platforms_csv(tmp_path):
    path = tmp_path / "platforms.csv"
    path.write_text("name,lat,lon\nAlpha,58.1,1.9\nBravo,57.0,2.5\nCharlie,61.2,1.7\n")
    return path


def test_nearest_table_for_one_vessel(platforms_csv):
    result = CliRunner().invoke(main, ["nearest", str(platforms_csv), "--lat", "58", "--lon", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and "distance km" in lines[0]
    assert "Alpha" in lines[1] and "12.580" in lines[1]


def test_nearest_json_for_vessels_csv_with_k(platforms_csv, tmp_path):
    vessels = tmp_path / "vessels.csv"
    vessels.write_text("id,lat,lon\nV1,58.0,362.0\nV2,61.0,1.5\n")
    result = CliRunner().invoke(
        main, ["nearest", str(platforms_csv), "--vessels", str(vessels), "--k", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)["vessels"]
    assert [r["vessel"] for r in records] == ["V1", "V2"]
    assert records[0]["lon"] == pytest.approx(2.0)  # normalised
    assert [m["name"] for m in records[0]["nearest"]] == ["Alpha", "Bravo"]
    assert [m["name"] for m in records[1]["nearest"]] == ["Charlie", "Alpha"]
    distances = [m["distance_km"] for m in records[0]["nearest"]]
    assert distances == sorted(distances) and distances[0] == pytest.approx(12.580, abs=1e-3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name,lat,lon\nA,1,2\nB,north,3\n", "platforms.csv row 3: lat 'north'"),
        ("name,lat,lon\nA,1,2\nB,95,3\n", "platforms.csv row 3: lat '95'"),
        ("name,lat,lon\nA,1,\n", "platforms.csv row 2: lon ''"),
        ("name,lat\nA,1\n", "platforms.csv: missing column(s) lon"),
        ("name,lat,lon\n", "platforms.csv: no data rows"),
    ],
)
def test_bad_csv_is_one_line_error_with_exit_code_2(tmp_path, content, message):
    path = tmp_path / "platforms.csv"
    path.write_text(content)
    result = CliRunner().invoke(main, ["nearest", str(path), "--lat", "0", "--lon", "0"])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_vessel_must_be_given_once(platforms_csv, tmp_path):
    result = CliRunner().invoke(main, ["nearest", str(platforms_csv), "--lat", "1"])
    assert result.exit_code == 2 and "--lon" in result.output
    result = CliRunner().invoke(
        main, ["nearest", str(platforms_csv), "--lat", "1", "--lon", "1", "--vessels", "x.csv"]
    )
    assert result.exit_code == 2 and "not both" in result.output


@pytest.mark.parametrize(
    "header",
    ["Name,Latitude,Longitude", "name,LAT,LNG", "NAME,lat,long", "name,Lat,Lon"],
)
def test_nearest_accepts_common_header_spellings(tmp_path, header):
    path = tmp_path / "platforms.csv"
    path.write_text(f"{header}\nAlpha,58.1,1.9\nBravo,57.0,2.5\n")
    result = CliRunner().invoke(main, ["nearest", str(path), "--lat", "58", "--lon", "2"])
    assert result.exit_code == 0, result.output
    assert "Alpha" in result.output and "12.580" in result.output


def test_missing_columns_error_names_found_and_expected(tmp_path):
    path = tmp_path / "platforms.csv"
    path.write_text("Site,X,Y\nA,1,2\n")
    result = CliRunner().invoke(main, ["nearest", str(path), "--lat", "0", "--lon", "0"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "platforms.csv: missing column(s) lat, lon" in line
    assert "found: site, x, y" in line and "latitude" in line and "longitude" in line
