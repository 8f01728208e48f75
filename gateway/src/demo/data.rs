//! A deterministic generator of synthetic regional records: a few hundred patients with NHS
//! numbers from the 999 test range (valid check digits), a share of them treated in two or three
//! regions, and items of every federated type (allergies, problems, vitals and labs, radiology and
//! pathology reports, encounters, medicines, referrals, discharge letters, immunisations,
//! procedures, maternity and cancer follow-up). The GP-recorded allergies are identical in every
//! region that holds them, as a shared GP record would make them.
//!
//! Randomness is a hand-written SplitMix64 (a few lines) rather than the `rand` crate: the demo
//! data must be the same on every machine and every version, which `rand`'s `StdRng` does not
//! promise.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Value, json};

use crate::fhir::nhs::{NHS_NUMBER_SYSTEM, NhsNumber};

/// SplitMix64: a small, well-known, stable generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// A synthetic patient and where they were treated.
#[derive(Debug, Clone)]
pub struct DemoPatient {
    pub nhs: NhsNumber,
    pub given: &'static str,
    pub family: &'static str,
    pub gender: &'static str,
    pub birth_date: String,
    /// Indices into the region list.
    pub regions: Vec<usize>,
}

/// The generated records, per region, with the patients worth showing in the demo.
pub struct DemoData {
    pub records: BTreeMap<String, Vec<Value>>,
    pub patients: Vec<DemoPatient>,
    /// Seen in every region.
    pub seen_everywhere: NhsNumber,
    /// Seen in exactly two regions.
    pub seen_in_two: NhsNumber,
    /// Seen in two regions whose demographics disagree (date of birth): a possible wrong match.
    pub mismatched: NhsNumber,
    /// Seen in two regions, and objects to sharing outside the home region (a Consent there).
    pub objecting: NhsNumber,
}

const GIVEN_F: [&str; 12] = [
    "Amelia", "Olivia", "Isla", "Ava", "Emily", "Sophie", "Grace", "Lily", "Freya", "Evie",
    "Margaret", "Joan",
];
const GIVEN_M: [&str; 12] = [
    "Oliver", "George", "Harry", "Jack", "Noah", "Charlie", "Thomas", "Arthur", "William", "James",
    "Peter", "Derek",
];
const FAMILY: [&str; 16] = [
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson",
    "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green",
];
const TOWNS: [(&str, &str); 3] = [
    ("Dorchester", "DT1"),
    ("Winchester", "SO23"),
    ("Salisbury", "SP1"),
];

const SNOMED: &str = "http://snomed.info/sct";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

const ALLERGENS: [(&str, &str, &str); 5] = [
    ("764146007", "Penicillin", "medication"),
    ("387207008", "Ibuprofen", "medication"),
    ("227493005", "Cashew nut", "food"),
    ("256259004", "Pollen", "environment"),
    ("111088007", "Latex", "environment"),
];
const CONDITIONS: [(&str, &str); 5] = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
    ("13645005", "Chronic obstructive lung disease"),
    ("49436004", "Atrial fibrillation"),
];
const VITALS: [(&str, &str, &str, u64, u64); 3] = [
    ("8867-4", "Heart rate", "/min", 55, 110),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 170),
    ("29463-7", "Body weight", "kg", 48, 115),
];
const LABS: [(&str, &str, &str, u64, u64); 3] = [
    (
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "%",
        4,
        11,
    ),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 9, 17),
    (
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "mg/dL",
        1,
        3,
    ),
];
const RADIOLOGY: [(&str, &str); 2] = [("36643-5", "XR Chest 2 Views"), ("24627-2", "CT Chest")];
const PATHOLOGY: [(&str, &str); 2] = [
    ("58410-2", "CBC panel - Blood by Automated count"),
    (
        "24323-8",
        "Comprehensive metabolic 2000 panel - Serum or Plasma",
    ),
];
const MEDICINES: [&str; 5] = [
    "Paracetamol 500mg tablets",
    "Metformin 500mg tablets",
    "Ramipril 5mg capsules",
    "Salbutamol 100micrograms/dose inhaler",
    "Atorvastatin 20mg tablets",
];
const PROCEDURES: [(&str, &str, &str, &str); 3] = [
    (
        "80146002",
        "Appendectomy",
        "387713003",
        "Surgical procedure",
    ),
    (
        "73761001",
        "Colonoscopy",
        "103693007",
        "Diagnostic procedure",
    ),
    (
        "232717009",
        "Coronary artery bypass grafting",
        "387713003",
        "Surgical procedure",
    ),
];
const VACCINES: [(&str, &str); 2] = [
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose"),
];

fn cc(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

/// A date-time in 2015..2025 (UTC).
fn when(rng: &mut Rng) -> String {
    let year = 2015 + rng.below(11);
    let month = 1 + rng.below(12);
    let day = 1 + rng.below(28);
    let hour = 8 + rng.below(10);
    let minute = rng.below(60);
    format!("{year}-{month:02}-{day:02}T{hour:02}:{minute:02}:00Z")
}

/// Generates the records of `regions` (codes) for `count` patients.
pub fn generate(regions: &[String], count: usize, seed: u64) -> DemoData {
    let mut rng = Rng::new(seed);
    let mut patients = Vec::with_capacity(count);
    let mut nine = 999_000_000u64;
    while patients.len() < count {
        nine += 1;
        let Some(nhs) = NhsNumber::from_nine_digits(nine) else {
            continue;
        };
        let female = rng.chance(52);
        let home = rng.below(regions.len() as u64) as usize;
        let i = patients.len();
        // The first patients are the demo's showcases; after them, about 10% are seen in three
        // regions and 25% in two.
        let spread = match i {
            0 => regions.len(),
            1..=3 => 2.min(regions.len()),
            _ => match rng.below(100) {
                0..10 => 3.min(regions.len()),
                10..35 => 2.min(regions.len()),
                _ => 1,
            },
        };
        let mut in_regions = vec![home];
        while in_regions.len() < spread {
            let r = (home + in_regions.len()) % regions.len();
            in_regions.push(r);
        }
        patients.push(DemoPatient {
            nhs,
            given: if female {
                rng.pick(&GIVEN_F)
            } else {
                rng.pick(&GIVEN_M)
            },
            family: rng.pick(&FAMILY),
            gender: if female { "female" } else { "male" },
            birth_date: format!(
                "{}-{:02}-{:02}",
                1935 + rng.below(70),
                1 + rng.below(12),
                1 + rng.below(28)
            ),
            regions: in_regions,
        });
    }
    let mut records: BTreeMap<String, Vec<Value>> =
        regions.iter().map(|r| (r.clone(), Vec::new())).collect();
    for (pi, p) in patients.iter().enumerate() {
        // The GP record's allergies, identical wherever they travel.
        let allergy_count = if pi == 0 { 2 } else { rng.below(3) as usize };
        let gp_allergies: Vec<(usize, String)> = (0..allergy_count)
            .map(|k| {
                (
                    rng.below(ALLERGENS.len() as u64) as usize,
                    format!("{}-{k}", p.nhs),
                )
            })
            .collect::<Vec<_>>();
        let gp_recorded = format!(
            "{}-{:02}-{:02}",
            2010 + rng.below(10),
            1 + rng.below(12),
            1 + rng.below(28)
        );
        for (order, &ri) in p.regions.iter().enumerate() {
            let region = &regions[ri];
            let out = records.get_mut(region).expect("region exists");
            let local = format!("{}-{:05}", &region[..region.len().min(3)], pi);
            let mut birth_date = p.birth_date.clone();
            if pi == 2 && order == 1 {
                // The deliberately mismatched patient: another region recorded another birth year.
                let year: u32 = p.birth_date[..4].parse().unwrap_or(1970);
                birth_date = format!("{}{}", year + 1, &p.birth_date[4..]);
            }
            let (town, postcode) = TOWNS[ri % TOWNS.len()];
            out.push(json!({
                "resourceType": "Patient",
                "id": local,
                "meta": {"lastUpdated": when(&mut rng)},
                "identifier": [
                    {"system": NHS_NUMBER_SYSTEM, "value": p.nhs.as_str()},
                    {"system": format!("urn:demo:{region}:mrn"), "value": local},
                ],
                "name": [{"use": "official", "family": p.family, "given": [p.given]}],
                "gender": p.gender,
                "birthDate": birth_date,
                "address": [{"use": "home", "line": [format!("{} {} Road", 1 + rng.below(120), rng.pick(&["Station", "Church", "Mill", "Victoria"]))], "city": town, "postalCode": format!("{postcode} {}{}", rng.below(9) + 1, rng.pick(&["AB", "QR", "XY"]))}],
                "telecom": [{"system": "phone", "value": format!("01{:03} {:06}", 200 + rng.below(700), rng.below(1_000_000)), "use": "home"}],
            }));
            let subject = json!({"reference": format!("Patient/{local}")});
            let mut n = 0usize;
            let mut id = |kind: &str| {
                n += 1;
                format!("{local}-{kind}-{n}")
            };
            for (a, ident) in &gp_allergies {
                let (code, display, category) = ALLERGENS[*a];
                out.push(json!({
                    "resourceType": "AllergyIntolerance", "id": id("alg"),
                    "identifier": [{"system": "urn:demo:gp-record:allergy", "value": ident}],
                    "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"),
                    "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "confirmed", "Confirmed"),
                    "type": "allergy", "category": [category], "criticality": if category == "medication" { "high" } else { "low" },
                    "code": cc(SNOMED, code, display), "patient": subject, "recordedDate": gp_recorded,
                    "recorder": {"display": "GP practice (shared GP record)"},
                }));
            }
            for _ in 0..(1 + rng.below(3)) {
                let class = rng.pick(&[
                    ("AMB", "ambulatory"),
                    ("IMP", "inpatient encounter"),
                    ("EMER", "emergency"),
                ]);
                let start = when(&mut rng);
                out.push(json!({
                    "resourceType": "Encounter", "id": id("enc"), "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class.0, "display": class.1},
                    "subject": subject, "period": {"start": start},
                    "serviceProvider": {"display": format!("{} hospital", town)},
                }));
            }
            for _ in 0..rng.below(3) {
                let (code, display) = rng.pick(&CONDITIONS);
                let onset = when(&mut rng);
                out.push(json!({
                    "resourceType": "Condition", "id": id("cond"),
                    "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
                    "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
                    "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item")],
                    "code": cc(SNOMED, code, display), "subject": subject, "onsetDateTime": onset, "recordedDate": onset,
                }));
            }
            for _ in 0..(2 + rng.below(4)) {
                let lab = rng.chance(50);
                let (code, display, unit, lo, hi) = if lab {
                    rng.pick(&LABS)
                } else {
                    rng.pick(&VITALS)
                };
                let (cat, cat_display) = if lab {
                    ("laboratory", "Laboratory")
                } else {
                    ("vital-signs", "Vital Signs")
                };
                out.push(json!({
                    "resourceType": "Observation", "id": id("obs"), "status": "final",
                    "category": [cc("http://terminology.hl7.org/CodeSystem/observation-category", cat, cat_display)],
                    "code": cc(LOINC, code, display), "subject": subject, "effectiveDateTime": when(&mut rng),
                    "valueQuantity": {"value": lo + rng.below(hi - lo + 1), "unit": unit, "system": UCUM, "code": unit},
                }));
            }
            for _ in 0..rng.below(3) {
                let rad = rng.chance(50);
                let (code, display) = if rad {
                    rng.pick(&RADIOLOGY)
                } else {
                    rng.pick(&PATHOLOGY)
                };
                let (cat, cat_display) = if rad {
                    ("RAD", "Radiology")
                } else {
                    ("LAB", "Laboratory")
                };
                let effective = when(&mut rng);
                out.push(json!({
                    "resourceType": "DiagnosticReport", "id": id("dr"), "status": "final",
                    "category": [cc("http://terminology.hl7.org/CodeSystem/v2-0074", cat, cat_display)],
                    "code": cc(LOINC, code, display), "subject": subject, "effectiveDateTime": effective, "issued": effective,
                    "conclusion": if rad { "No acute abnormality." } else { "Within reference ranges." },
                }));
            }
            for _ in 0..rng.below(3) {
                let medicine = rng.pick(&MEDICINES);
                out.push(json!({
                    "resourceType": "MedicationStatement", "id": id("ms"), "status": rng.pick(&["active", "completed"]),
                    "category": cc("http://terminology.hl7.org/CodeSystem/medication-statement-category", "community", "Community"),
                    "medicationCodeableConcept": {"text": medicine}, "subject": subject, "effectiveDateTime": when(&mut rng),
                }));
            }
            for _ in 0..rng.below(3) {
                let medicine = rng.pick(&MEDICINES);
                let (cat, cat_display) = rng.pick(&[
                    ("community", "Community"),
                    ("inpatient", "Inpatient"),
                    ("discharge", "Discharge"),
                ]);
                out.push(json!({
                    "resourceType": "MedicationRequest", "id": id("mr"), "status": rng.pick(&["active", "completed"]), "intent": "order",
                    "category": [cc("http://terminology.hl7.org/CodeSystem/medicationrequest-category", cat, cat_display)],
                    "medicationCodeableConcept": {"text": medicine}, "subject": subject, "authoredOn": when(&mut rng),
                    "dosageInstruction": [{"text": "As directed"}],
                }));
            }
            if rng.chance(40) {
                out.push(json!({
                    "resourceType": "ServiceRequest", "id": id("ref"), "status": rng.pick(&["active", "completed"]), "intent": "order",
                    "category": [cc(SNOMED, "3457005", "Patient referral")],
                    "code": cc(SNOMED, "306206005", "Referral to service"), "subject": subject, "authoredOn": when(&mut rng),
                    "requester": {"display": "General practitioner"},
                }));
            }
            if rng.chance(35) {
                let date = when(&mut rng);
                let letter = format!(
                    "Discharge summary. Admitted to {town} hospital and discharged home. Follow up with GP in two weeks."
                );
                out.push(json!({
                    "resourceType": "DocumentReference", "id": id("doc"), "status": "current",
                    "type": cc(SNOMED, "373942005", "Discharge summary"),
                    "category": [cc(SNOMED, "823691000000103", "Clinical letter")],
                    "subject": subject, "date": date, "description": "Discharge letter",
                    "content": [{"attachment": {"contentType": "text/plain", "language": "en-GB", "title": "Discharge letter",
                        "data": base64::engine::general_purpose::STANDARD.encode(letter)}}],
                }));
            }
            if rng.chance(40) {
                let (code, display) = rng.pick(&VACCINES);
                out.push(json!({
                    "resourceType": "Immunization", "id": id("imm"), "status": "completed",
                    "vaccineCode": cc("http://hl7.org/fhir/sid/cvx", code, display), "patient": subject,
                    "occurrenceDateTime": when(&mut rng), "primarySource": true,
                }));
            }
            if rng.chance(25) {
                let (code, display, cat, cat_display) = rng.pick(&PROCEDURES);
                out.push(json!({
                    "resourceType": "Procedure", "id": id("proc"), "status": "completed",
                    "category": cc(SNOMED, cat, cat_display), "code": cc(SNOMED, code, display),
                    "subject": subject, "performedDateTime": when(&mut rng),
                }));
            }
            // Maternity: an antenatal episode for some women of child-bearing age.
            let age = 2025 - p.birth_date[..4].parse::<i64>().unwrap_or(1970);
            if p.gender == "female" && (18..=45).contains(&age) && rng.chance(30) {
                let start = format!("2024-{:02}-{:02}", 1 + rng.below(9), 1 + rng.below(28));
                out.push(json!({
                    "resourceType": "Condition", "id": id("preg"),
                    "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
                    "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
                    "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis", "Encounter Diagnosis")],
                    "code": cc(SNOMED, "77386006", "Pregnancy"), "subject": subject, "onsetDateTime": start, "recordedDate": start,
                }));
                out.push(json!({
                    "resourceType": "Encounter", "id": id("anc"), "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
                    "type": [cc(SNOMED, "424525001", "Antenatal care")], "subject": subject, "period": {"start": format!("{start}T10:00:00Z")},
                }));
            }
            // The objecting patient recorded an opt-out with their home region (the first region
            // they are seen in): their record there is not to leave it.
            if pi == 3 && order == 0 {
                out.push(json!({
                    "resourceType": "Consent", "id": id("consent"), "status": "active",
                    "scope": cc("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy", "Privacy Consent"),
                    "category": [cc(LOINC, "59284-0", "Patient Consent")],
                    "patient": subject, "dateTime": "2024-03-01T09:00:00Z",
                    "policyRule": cc("http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTOUT", "opt-out"),
                    "provision": {"type": "deny"},
                }));
            }
            // Sensitive items, labelled in meta.security: the showcase patient has an HIV-labelled
            // and a mental-health-labelled condition in their home region, as do a few others.
            if (pi == 0 && order == 0) || (pi > 2 && order == 0 && rng.chance(4)) {
                let onset = when(&mut rng);
                out.push(json!({
                    "resourceType": "Condition", "id": id("hiv"),
                    "meta": {"security": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R", "display": "restricted"},
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV", "display": "HIV/AIDS information sensitivity"}]},
                    "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
                    "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
                    "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item")],
                    "code": cc(SNOMED, "86406008", "Human immunodeficiency virus infection"), "subject": subject, "onsetDateTime": onset, "recordedDate": onset,
                }));
            }
            if (pi == 0 && order == 0) || (pi > 2 && rng.chance(5)) {
                let onset = when(&mut rng);
                out.push(json!({
                    "resourceType": "Condition", "id": id("psy"),
                    "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY", "display": "psychiatry disorder information sensitivity"}]},
                    "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
                    "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
                    "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item")],
                    "code": cc(SNOMED, "35489007", "Depressive disorder"), "subject": subject, "onsetDateTime": onset, "recordedDate": onset,
                }));
            }
            // Cancer follow-up.
            if rng.chance(6) {
                let onset = when(&mut rng);
                out.push(json!({
                    "resourceType": "Condition", "id": id("ca"),
                    "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "remission", "Remission"),
                    "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
                    "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item")],
                    "code": cc(SNOMED, "254837009", "Malignant neoplasm of breast"), "subject": subject, "onsetDateTime": onset, "recordedDate": onset,
                }));
                out.push(json!({
                    "resourceType": "ServiceRequest", "id": id("cafu"), "status": "active", "intent": "order",
                    "category": [cc(SNOMED, "3457005", "Patient referral")],
                    "code": {"coding": [{"system": SNOMED, "code": "306206005", "display": "Referral to service"}], "text": "Oncology follow-up"},
                    "subject": subject, "authoredOn": when(&mut rng), "requester": {"display": "Oncology clinic"},
                }));
            }
        }
    }
    let seen_everywhere = patients[0].nhs.clone();
    let seen_in_two = patients[1].nhs.clone();
    let mismatched = patients[2].nhs.clone();
    let objecting = patients[3.min(patients.len() - 1)].nhs.clone();
    DemoData {
        records,
        patients,
        seen_everywhere,
        seen_in_two,
        mismatched,
        objecting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<String> {
        vec!["dorset".into(), "hampshire".into(), "wiltshire".into()]
    }

    #[test]
    fn is_deterministic() {
        let a = generate(&regions(), 50, 7);
        let b = generate(&regions(), 50, 7);
        assert_eq!(a.records, b.records);
    }

    #[test]
    fn nhs_numbers_are_valid_test_numbers_and_unique() {
        let d = generate(&regions(), 300, 1);
        let mut seen = std::collections::BTreeSet::new();
        for p in &d.patients {
            assert!(p.nhs.as_str().starts_with("999"));
            assert!(NhsNumber::parse(p.nhs.as_str()).is_ok());
            assert!(seen.insert(p.nhs.clone()));
        }
    }

    #[test]
    fn a_realistic_share_is_seen_in_several_regions_with_every_type() {
        let d = generate(&regions(), 300, 1);
        let multi = d.patients.iter().filter(|p| p.regions.len() > 1).count();
        assert!(
            (60..=140).contains(&multi),
            "{multi} of 300 in more than one region"
        );
        assert_eq!(d.patients[0].regions.len(), 3);
        for region in regions() {
            let types: std::collections::BTreeSet<&str> = d.records[&region]
                .iter()
                .map(|r| r["resourceType"].as_str().unwrap())
                .collect();
            for t in crate::fhir::types::ResourceType::ALL {
                assert!(types.contains(t.as_str()), "{region} lacks {}", t.as_str());
            }
        }
    }

    #[test]
    fn the_mismatched_patient_disagrees_on_birth_date() {
        let d = generate(&regions(), 10, 1);
        let births: std::collections::BTreeSet<String> = d
            .records
            .values()
            .flatten()
            .filter(|r| {
                r["resourceType"] == "Patient"
                    && crate::record::has_nhs_number(r, d.mismatched.as_str())
            })
            .map(|r| r["birthDate"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(births.len(), 2);
    }
}
