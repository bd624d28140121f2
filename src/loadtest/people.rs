//! The people of the sale: names and addresses in many scripts, with emoji,
//! combining marks, right-to-left text, ZWJ sequences and characters JSON
//! must escape. The processor must carry every one of them byte for byte.

use crate::order::Address;
use rand::seq::SliceRandom;
use rand::Rng;

/// Names in many scripts, with emoji, combining marks, ZWJ sequences and
/// characters JSON must escape: the processor must carry them byte for byte.
const NAMES: [&str; 30] = [
    "Zoë Ørsted",
    "李小龍",
    "Jürgen Groß",
    "Анна Каренина",
    "محمد الفاسي",
    "דוד כהן",
    "प्रिया शर्मा",
    "สมชาย ใจดี",
    "Γιώργος Παπαδόπουλος",
    "김민준",
    "山田 太郎",
    "Nguyễn Thị Minh Khai",
    "Łukasz Wróbel",
    "Søren Kierkegaard",
    "José Núñez",
    "O'Brien \"Bob\"",
    "Ελένη 👩‍💻",
    "Ayşe Yılmaz",
    "Ṣàngó Adéwálé",
    "Kwame Nkrumah 🚀",
    "Mária Šťastná",
    "Björk Guðmundsdóttir",
    "ሰላም ተስፋዬ",
    "Արամ Խաչատրյան",
    "ნინო ბერიძე",
    "Tomás 🏳️‍🌈",
    "👩‍👩‍👧 Family Doe",
    "Z̷a̷l̷g̷o̷ Tester",
    "Back\\slash\tTab",
    "Ｆｕｌｌｗｉｄｔｈ 🛒🎉",
];
const STREETS: [&str; 16] = [
    "Hauptstraße 1",
    "1-2-3 Shibuya, 渋谷区",
    "ул. Тверская, д. 7",
    "شارع التحرير 12",
    "רחוב הרצל 5",
    "221B Baker Street",
    "Rue de l'Église 4",
    "Calle Mayor 3, 2º izq.",
    "Nowy Świat 15",
    "테헤란로 152",
    "建国路 88号",
    "Οδός Θεσσαλονίκης 9",
    "ถนนสุขุมวิท 21",
    "MG Road, बेंगलुरु",
    "Pier 39 🌉",
    "Rua Augusta 1500 🏠",
];
const CITIES: [(&str, &str); 16] = [
    ("Berlin", "DE"),
    ("東京", "JP"),
    ("Москва", "RU"),
    ("القاهرة", "EG"),
    ("תל אביב", "IL"),
    ("London", "GB"),
    ("Paris", "FR"),
    ("Madrid", "ES"),
    ("Warszawa", "PL"),
    ("서울", "KR"),
    ("北京", "CN"),
    ("Αθήνα", "GR"),
    ("กรุงเทพมหานคร", "TH"),
    ("बेंगलुरु", "IN"),
    ("San Francisco", "US"),
    ("São Paulo", "BR"),
];
pub const ADDRESS_KEYS: [&str; 10] = [
    "home", "office", "parents", "pickup", "gift", "cabin", "studio", "locker", "school", "friend",
];
const LABELS: [&str; 5] = ["", " 🏠", " 🏢", " 🎁", " ✨"];
/// A shipping address: a name, street and city from the tables, now and
/// then a second line and a region.
pub fn address(rng: &mut impl Rng) -> Address<'static> {
    let (city, country) = *CITIES.choose(rng).expect("not empty");
    Address {
        name: format!(
            "{}{}",
            NAMES.choose(rng).expect("not empty"),
            LABELS.choose(rng).expect("not empty")
        )
        .into(),
        line1: STREETS.choose(rng).expect("not empty").to_string().into(),
        line2: rng
            .gen_bool(0.3)
            .then(|| format!("Apt {} ✨", rng.gen_range(1..200)).into()),
        city: city.to_string().into(),
        region: rng.gen_bool(0.2).then(|| "Région Île-de-France".into()),
        postal_code: format!("{:05}", rng.gen_range(1000..99_999)).into(),
        country: country.to_string().into(),
    }
}
