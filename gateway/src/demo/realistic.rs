//! Realistic patients, beside the demo's small ones: records of a real regional size, shaped as
//! GP and hospital systems make them. Each has ten or more years of care in every region that
//! treated them: hundreds of encounters, vital signs and laboratory results (most of the
//! record, one Observation per measurement), reports that point at their results, repeat
//! prescriptions of coded medicines, problems, allergies, immunisations, referrals and letters.
//! Items reference the practitioners, roles, organisations (with ODS codes), locations and
//! medications that the same region holds, and a few measurements are held twice under two
//! ids, as an interface that copies a message makes them.
//!
//! Deterministic, like [`super::data`]: the same seed gives the same records everywhere.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::data::{DemoPatient, Rng};
use crate::fhir::nhs::{NHS_NUMBER_SYSTEM, NhsNumber};

const SNOMED: &str = "http://snomed.info/sct";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const DMD: &str = "https://dmd.nhs.uk";
/// The ODS code system for organisations.
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// The GMC number system for doctors.
pub const GMC_SYSTEM: &str = "https://fhir.hl7.org.uk/Id/gmc-number";

/// Vital signs: LOINC code, display, unit, low, high.
const VITALS: [(&str, &str, &str, u64, u64); 6] = [
    ("8867-4", "Heart rate", "/min", 55, 110),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 170),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 100),
    ("29463-7", "Body weight", "kg", 48, 115),
    ("8310-5", "Body temperature", "Cel", 36, 39),
    (
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        "%",
        90,
        100,
    ),
];
/// Laboratory results of a renal and diabetes panel, with reference ranges.
const LABS: [(&str, &str, &str, u64, u64, u64, u64); 6] = [
    (
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "%",
        4,
        11,
        4,
        6,
    ),
    (
        "718-7",
        "Hemoglobin [Mass/volume] in Blood",
        "g/dL",
        9,
        17,
        12,
        16,
    ),
    (
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "mg/dL",
        1,
        3,
        1,
        2,
    ),
    (
        "2823-3",
        "Potassium [Moles/volume] in Serum or Plasma",
        "mmol/L",
        3,
        6,
        3,
        5,
    ),
    (
        "2951-2",
        "Sodium [Moles/volume] in Serum or Plasma",
        "mmol/L",
        130,
        148,
        135,
        145,
    ),
    (
        "2093-3",
        "Cholesterol [Mass/volume] in Serum or Plasma",
        "mmol/L",
        3,
        8,
        3,
        5,
    ),
];
/// Medicines: dm+d code and name.
const MEDICINES: [(&str, &str); 6] = [
    ("322236009", "Paracetamol 500mg tablets"),
    ("325278007", "Metformin 500mg tablets"),
    ("318906001", "Ramipril 5mg capsules"),
    ("320176004", "Salbutamol 100micrograms/dose inhaler"),
    ("320000009", "Atorvastatin 20mg tablets"),
    ("317972000", "Amlodipine 5mg tablets"),
];
const CONDITIONS: [(&str, &str); 6] = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
    ("13645005", "Chronic obstructive lung disease"),
    ("49436004", "Atrial fibrillation"),
    ("709044004", "Chronic kidney disease"),
];
const ALLERGENS: [(&str, &str, &str); 3] = [
    ("764146007", "Penicillin", "medication"),
    ("387207008", "Ibuprofen", "medication"),
    ("227493005", "Cashew nut", "food"),
];

fn cc(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

/// The organisations, practitioners, roles, locations and medicines a region's record holds,
/// by local id. The first GP practice and its lead GP are known to every region under their
/// ODS code and GMC number (each region under its own local ids): one practice, one doctor.
struct Directory {
    organisations: Vec<String>,
    practitioners: Vec<String>,
    roles: Vec<String>,
    locations: Vec<String>,
    medications: Vec<String>,
}

fn directory(region: &str, ri: usize, out: &mut Vec<Value>) -> Directory {
    let short = &region[..region.len().min(3)];
    let mut d = Directory {
        organisations: Vec::new(),
        practitioners: Vec::new(),
        roles: Vec::new(),
        locations: Vec::new(),
        medications: Vec::new(),
    };
    // The shared GP practice first (the same ODS code in every region), then this region's own.
    let orgs = [
        ("J82001".to_owned(), "Border Surgery".to_owned(), "GPPRC"),
        (
            format!("R{}{}", 10 + ri, "A"),
            format!("{region} Hospitals NHS Trust"),
            "TRUST",
        ),
        (
            format!("K{}{:03}", ri, 101),
            format!("{region} Health Centre"),
            "GPPRC",
        ),
    ];
    for (k, (ods, name, role)) in orgs.iter().enumerate() {
        let id = format!("{short}-org-{k}");
        out.push(json!({
            "resourceType": "Organization", "id": id, "active": true,
            "identifier": [{"system": ODS_SYSTEM, "value": ods}],
            "type": [cc("https://fhir.nhs.uk/CodeSystem/organisation-role", role, if *role == "TRUST" { "NHS Trust" } else { "GP Practice" })],
            "name": name,
        }));
        d.organisations.push(id);
    }
    let doctors = [
        ("4123456", "Patel", "Anita"),
        (&*format!("71{:05}", ri * 11 + 3), "Hughes", "Robert"),
        (&*format!("72{:05}", ri * 13 + 5), "Okafor", "Chidi"),
        (&*format!("73{:05}", ri * 17 + 7), "Morgan", "Sian"),
    ];
    for (k, (gmc, family, given)) in doctors.iter().enumerate() {
        let id = format!("{short}-prac-{k}");
        out.push(json!({
            "resourceType": "Practitioner", "id": id, "active": true,
            "identifier": [{"system": GMC_SYSTEM, "value": gmc}],
            "name": [{"family": family, "given": [given], "prefix": ["Dr"]}],
        }));
        let role = format!("{short}-role-{k}");
        out.push(json!({
            "resourceType": "PractitionerRole", "id": role, "active": true,
            "practitioner": {"reference": format!("Practitioner/{id}")},
            "organization": {"reference": format!("Organization/{}", d.organisations[if k == 0 { 0 } else { 1 + k % 2 }])},
            "code": [cc("https://fhir.nhs.uk/CodeSystem/NHSDigital-SDSJobRoleName", "R0260", "General Medical Practitioner")],
        }));
        d.practitioners.push(id);
        d.roles.push(role);
    }
    for (k, name) in [
        "Outpatients",
        "Ward 7",
        "Emergency Department",
        "Pathology Laboratory",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("{short}-loc-{k}");
        out.push(json!({
            "resourceType": "Location", "id": id, "status": "active", "name": format!("{region}: {name}"),
            "managingOrganization": {"reference": format!("Organization/{}", d.organisations[1])},
        }));
        d.locations.push(id);
    }
    for (k, (code, name)) in MEDICINES.iter().enumerate() {
        let id = format!("{short}-med-{k}");
        out.push(json!({
            "resourceType": "Medication", "id": id,
            "code": cc(DMD, code, name),
        }));
        d.medications.push(id);
    }
    d
}

/// A date-time `days` after 2012-01-01, during the working day.
fn day_time(days: u64, rng: &mut Rng) -> String {
    let date = time::Date::from_calendar_date(2012, time::Month::January, 1)
        .expect("a valid date")
        .checked_add(time::Duration::days(days as i64))
        .expect("within range");
    format!("{}T{:02}:{:02}:00Z", date, 8 + rng.below(10), rng.below(60))
}

/// The realistic patients and their records: `count` patients, each treated in every region
/// (the first region is their home). The first has about `items_per_region` items in each
/// region, and each one after it half as many again as the first.
pub fn generate(
    regions: &[String],
    count: usize,
    items_per_region: usize,
    seed: u64,
) -> (BTreeMap<String, Vec<Value>>, Vec<DemoPatient>) {
    let mut rng = Rng::new(seed ^ 0x5EA1_15C0);
    let mut records: BTreeMap<String, Vec<Value>> =
        regions.iter().map(|r| (r.clone(), Vec::new())).collect();
    let dirs: Vec<Directory> = regions
        .iter()
        .enumerate()
        .map(|(ri, r)| directory(r, ri, records.get_mut(r).expect("region")))
        .collect();
    let mut patients = Vec::new();
    // NHS numbers from their own part of the 999 test range, apart from the small patients'.
    let mut nine = 999_900_000u64;
    while patients.len() < count {
        nine += 1;
        let Some(nhs) = NhsNumber::from_nine_digits(nine) else {
            continue;
        };
        let pi = patients.len();
        let female = pi % 2 == 0;
        let patient = DemoPatient {
            nhs,
            given: if female { "Margaret" } else { "Arthur" },
            family: ["Thornbury", "Ashdown", "Fairweather", "Penhaligon"][pi % 4],
            gender: if female { "female" } else { "male" },
            birth_date: format!("19{}-0{}-1{}", 40 + pi * 7 % 40, 1 + pi % 9, pi % 9),
            regions: (0..regions.len()).collect(),
        };
        // Shared across regions: the GP record's allergies (one business identifier).
        let allergies: Vec<usize> = (0..1 + pi % 3).collect();
        for (ri, region) in regions.iter().enumerate() {
            let out = records.get_mut(region).expect("region");
            // Each patient is larger than the one before: the last is the largest.
            let size = items_per_region * (2 + pi) / 2 + ri * 17;
            patient_record(
                &patient, pi, ri, region, &dirs[ri], &allergies, size, &mut rng, out,
            );
        }
        patients.push(patient);
    }
    (records, patients)
}

#[allow(clippy::too_many_arguments)]
fn patient_record(
    p: &DemoPatient,
    pi: usize,
    ri: usize,
    region: &str,
    dir: &Directory,
    allergies: &[usize],
    size: usize,
    rng: &mut Rng,
    out: &mut Vec<Value>,
) {
    let short = &region[..region.len().min(3)];
    let local = format!("{short}-rp{pi}");
    let start = out.len();
    out.push(json!({
        "resourceType": "Patient", "id": local,
        "meta": {"lastUpdated": "2025-06-01T09:00:00Z"},
        "identifier": [
            {"system": NHS_NUMBER_SYSTEM, "value": p.nhs.as_str()},
            {"system": format!("urn:demo:{region}:mrn"), "value": local},
        ],
        "name": [{"use": "official", "family": p.family, "given": [p.given]}],
        "gender": p.gender, "birthDate": p.birth_date,
        "generalPractitioner": [{"reference": format!("Organization/{}", dir.organisations[0])}],
        "managingOrganization": {"reference": format!("Organization/{}", dir.organisations[1])},
    }));
    let subject = json!({"reference": format!("Patient/{local}")});
    let r = |t: &str, id: &str| json!({"reference": format!("{t}/{id}")});
    let mut n = 0usize;
    let mut id = |kind: &str| {
        n += 1;
        format!("{local}-{kind}-{n}")
    };
    for &a in allergies {
        let (code, display, category) = ALLERGENS[a];
        out.push(json!({
            "resourceType": "AllergyIntolerance", "id": id("alg"),
            "identifier": [{"system": "urn:demo:gp-record:allergy", "value": format!("{}-{a}", p.nhs)}],
            "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"),
            "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "confirmed", "Confirmed"),
            "type": "allergy", "category": [category], "criticality": if category == "medication" { "high" } else { "low" },
            "code": cc(SNOMED, code, display), "patient": subject, "recordedDate": "2013-04-02",
            "recorder": r("Practitioner", &dir.practitioners[0]),
        }));
    }
    for k in 0..3 + pi % 3 {
        let (code, display) = CONDITIONS[(k + ri) % CONDITIONS.len()];
        let onset = day_time(rng.below(3650), rng);
        out.push(json!({
            "resourceType": "Condition", "id": id("cond"),
            "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
            "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
            "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item")],
            "code": cc(SNOMED, code, display), "subject": subject, "onsetDateTime": onset, "recordedDate": onset,
            "asserter": r("Practitioner", &dir.practitioners[k % dir.practitioners.len()]),
        }));
    }
    for year in 0..10u64 {
        let (code, display) = ("140", "Influenza, seasonal, injectable, preservative free");
        out.push(json!({
            "resourceType": "Immunization", "id": id("imm"), "status": "completed",
            "vaccineCode": cc("http://hl7.org/fhir/sid/cvx", code, display), "patient": subject,
            "occurrenceDateTime": day_time(year * 365 + 280 + rng.below(40), rng), "primarySource": true,
            "performer": [{"actor": r("Practitioner", &dir.practitioners[0])}],
            "location": r("Location", &dir.locations[0]),
        }));
    }
    // Repeat prescriptions: each chronic medicine every eight weeks or so over the years.
    let mut day = rng.below(60);
    let mut k = 0;
    while day < 3650 && out.len() - start < size / 5 {
        let m = (k + ri) % dir.medications.len();
        let (code, name) = MEDICINES[m];
        out.push(json!({
            "resourceType": "MedicationRequest", "id": id("mr"), "status": if day < 3300 { "completed" } else { "active" },
            "intent": "order",
            "category": [cc("http://terminology.hl7.org/CodeSystem/medicationrequest-category", "community", "Community")],
            "medicationReference": {"reference": format!("Medication/{}", dir.medications[m]), "display": name},
            "subject": subject, "authoredOn": day_time(day, rng),
            "requester": r("PractitionerRole", &dir.roles[k % dir.roles.len()]),
            "dosageInstruction": [{"text": "One to be taken each day"}],
            "note": [{"text": format!("dm+d {code}")}],
        }));
        k += 1;
        day += 20 + rng.below(40);
    }
    // Encounters, each with its measurements; every fourth with a laboratory panel and its
    // report. Goes on until the record reaches its size.
    let mut day = rng.below(30);
    let mut visit = 0usize;
    while out.len() - start < size {
        visit += 1;
        let hospital = visit % 5 == 0;
        let when = day_time(day % 3800, rng);
        let enc = id("enc");
        let practitioner = &dir.practitioners[visit % dir.practitioners.len()];
        let (class, class_display) = if hospital {
            ("IMP", "inpatient encounter")
        } else {
            ("AMB", "ambulatory")
        };
        out.push(json!({
            "resourceType": "Encounter", "id": enc, "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class, "display": class_display},
            "subject": subject, "period": {"start": when},
            "participant": [{"individual": r("Practitioner", practitioner)}],
            "location": [{"location": r("Location", &dir.locations[if hospital { 1 } else { 0 }])}],
            "serviceProvider": r("Organization", &dir.organisations[if hospital { 1 } else { 2 }]),
        }));
        for (code, display, unit, lo, hi) in VITALS.iter().take(3 + visit % 4) {
            let obs = json!({
                "resourceType": "Observation", "status": "final",
                "category": [cc("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")],
                "code": cc(LOINC, code, display), "subject": subject, "effectiveDateTime": when,
                "encounter": r("Encounter", &enc), "performer": [r("Practitioner", practitioner)],
                "valueQuantity": {"value": lo + rng.below(hi - lo + 1), "unit": unit, "system": UCUM, "code": unit},
            });
            // Now and then an interface delivers a measurement twice: two records, two ids.
            let copies = if visit % 17 == 3 { 2 } else { 1 };
            for _ in 0..copies {
                let mut o = obs.clone();
                o["id"] = json!(id("obs"));
                out.push(o);
            }
        }
        if visit % 4 == 0 {
            let mut results = Vec::new();
            for (code, display, unit, lo, hi, ref_lo, ref_hi) in LABS {
                let value = lo + rng.below(hi - lo + 1);
                let oid = id("lab");
                let abnormal = value < ref_lo || value > ref_hi;
                out.push(json!({
                    "resourceType": "Observation", "id": oid, "status": "final",
                    "category": [cc("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory")],
                    "code": cc(LOINC, code, display), "subject": subject, "effectiveDateTime": when,
                    "encounter": r("Encounter", &enc), "performer": [r("Organization", &dir.organisations[1])],
                    "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
                    "interpretation": [cc("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", if abnormal { "A" } else { "N" }, if abnormal { "Abnormal" } else { "Normal" })],
                    "referenceRange": [{"low": {"value": ref_lo, "unit": unit, "system": UCUM, "code": unit}, "high": {"value": ref_hi, "unit": unit, "system": UCUM, "code": unit}}],
                }));
                results.push(r("Observation", &oid));
            }
            out.push(json!({
                "resourceType": "DiagnosticReport", "id": id("dr"), "status": "final",
                "category": [cc("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")],
                "code": cc(LOINC, "24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"),
                "subject": subject, "encounter": r("Encounter", &enc), "effectiveDateTime": when, "issued": when,
                "performer": [r("Organization", &dir.organisations[1])], "result": results,
                "conclusion": "Reviewed.",
            }));
        }
        if hospital {
            out.push(json!({
                "resourceType": "DocumentReference", "id": id("doc"), "status": "current",
                "type": cc(SNOMED, "373942005", "Discharge summary"),
                "category": [cc(SNOMED, "823691000000103", "Clinical letter")],
                "subject": subject, "date": when, "description": "Discharge letter",
                "author": [r("Practitioner", practitioner)], "custodian": r("Organization", &dir.organisations[1]),
                "context": {"encounter": [r("Encounter", &enc)]},
                "content": [{"attachment": {"contentType": "text/plain", "title": "Discharge letter",
                    "data": "RGlzY2hhcmdlZCBob21lLiBGb2xsb3cgdXAgd2l0aCBHUCBpbiB0d28gd2Vla3Mu"}}],
            }));
        }
        if visit % 25 == 0 {
            out.push(json!({
                "resourceType": "ServiceRequest", "id": id("ref"), "status": "completed", "intent": "order",
                "category": [cc(SNOMED, "3457005", "Patient referral")],
                "code": cc(SNOMED, "306206005", "Referral to service"), "subject": subject, "authoredOn": when,
                "requester": r("Practitioner", practitioner), "performer": [r("Organization", &dir.organisations[1])],
            }));
            out.push(json!({
                "resourceType": "Procedure", "id": id("proc"), "status": "completed",
                "code": cc(SNOMED, "73761001", "Colonoscopy"), "subject": subject, "performedDateTime": when,
                "encounter": r("Encounter", &enc),
                "performer": [{"actor": r("Practitioner", practitioner)}], "location": r("Location", &dir.locations[1]),
            }));
        }
        day += 9 + rng.below(20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<String> {
        vec!["dorset".into(), "hampshire".into(), "wiltshire".into()]
    }

    #[test]
    fn realistic_patients_are_large_referenced_and_deterministic() {
        let (records, patients) = generate(&regions(), 3, 400, 5);
        assert_eq!(generate(&regions(), 3, 400, 5).0, records);
        assert_eq!(patients.len(), 3);
        for p in &patients {
            assert!(NhsNumber::parse(p.nhs.as_str()).is_ok());
        }
        for (region, resources) in &records {
            let ids: std::collections::BTreeSet<String> = resources
                .iter()
                .map(|r| {
                    format!(
                        "{}/{}",
                        r["resourceType"].as_str().unwrap(),
                        r["id"].as_str().unwrap()
                    )
                })
                .collect();
            assert_eq!(ids.len(), resources.len(), "{region}: ids are unique");
            // Every reference resolves inside the region's own record.
            let mut references = 0;
            for r in resources {
                for target in references_of(r) {
                    references += 1;
                    assert!(ids.contains(&target), "{region}: {target} is not held");
                }
            }
            assert!(references > 1000, "{region}: {references} references");
            let observations = resources
                .iter()
                .filter(|r| r["resourceType"] == "Observation")
                .count();
            assert!(
                observations * 2 > resources.len(),
                "{region}: measurements dominate"
            );
        }
    }

    fn references_of(v: &Value) -> Vec<String> {
        let mut out = Vec::new();
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match x {
                        Value::String(s) if k == "reference" => out.push(s.clone()),
                        other => out.extend(references_of(other)),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| out.extend(references_of(x))),
            _ => {}
        }
        out
    }
}
